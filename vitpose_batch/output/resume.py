"""Resume in O(new): which listed images an OUTPUT already holds, without holding the corpus in Python objects.

Each committed row's canonical `image_uri` becomes a 128-bit key (BLAKE2b); the keys sit in two sorted uint64
arrays (16 bytes an image: 160 MB at 10^7 images), and the listing streams past them in chunks, each chunk
filtered with a vectorised binary search. Keys are recomputed from `image_uri` on every run, never stored, so the
rows stay the only truth. Error rows that may succeed now (`error_retryable`, or every error with
`--retry-errors`) are candidates to redo: a redone image's old row is removed from its part before the work starts,
so the image has exactly one row whether or not the redo finishes.

Why not Ray Data's `CheckpointConfig`: it keeps its own id store beside the output, deletes it on success, and
filters rows inside read tasks; here OUTPUT itself is the checkpoint (it survives success, a nightly run resumes
against it) and the listing is streamed by the driver, which must also decide which error rows to redo.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vitpose_batch.output.layout import Output
from vitpose_batch.output.parts import drop_rows, list_part_files, read_parquet

log = logging.getLogger("vitpose_batch")


def uri_keys(uris: Iterable[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, 2) uint64 keys of canonical URIs: the 128-bit BLAKE2b of their UTF-8 bytes."""
    if isinstance(uris, (pa.Array, pa.ChunkedArray)):
        uris = uris.to_pylist()
    digests = b"".join([hashlib.blake2b(u.encode(), digest_size=16).digest() for u in uris])
    return np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)


class KeySet:
    """A sorted set of 128-bit keys with vectorised membership."""

    def __init__(self, keys: np.ndarray) -> None:
        keys = keys.reshape(-1, 2)
        order = np.argsort(keys[:, 0])
        self.hi = np.ascontiguousarray(keys[order, 0])
        self.lo = np.ascontiguousarray(keys[order, 1])

    def __len__(self) -> int:
        return len(self.hi)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which of `keys` (n, 2) are in the set."""
        keys = keys.reshape(-1, 2)
        n = len(self.hi)
        if not n or not len(keys):
            return np.zeros(len(keys), bool)
        # sorted needles: numpy's binary search starts from the previous answer, which keeps it in cache
        order = np.argsort(keys[:, 0])
        hi, lo = keys[order, 0], keys[order, 1]
        at = np.minimum(np.searchsorted(self.hi, hi), n - 1)
        same_hi = self.hi[at] == hi
        found = same_hi & (self.lo[at] == lo)
        # two keys sharing their upper 64 bits (~never): look through the whole run of that upper half
        for i in np.flatnonzero(same_hi & ~found):
            end = at[i]
            while end < n and self.hi[end] == hi[i]:
                if self.lo[end] == lo[i]:
                    found[i] = True
                    break
                end += 1
        mask = np.empty(len(keys), bool)
        mask[order] = found
        return mask

    def without(self, keys: np.ndarray) -> KeySet:
        """A copy less `keys`."""
        if not len(keys):
            return self
        other = KeySet(keys)
        mine = np.stack([self.hi, self.lo], axis=1)
        return KeySet(mine[~other.contains(mine)])


class GrowingKeySet:
    """Keys added batch by batch (a run's own writes), with KeySet's vectorised membership: a few sorted KeySets
    whose sizes at least double from the newest to the oldest, merged as they fill (a log-structured merge), so n keys
    cost O(n log n) in all to add, not a re-sort of everything seen at every batch; 16 bytes per key."""

    def __init__(self) -> None:
        self.levels: list[tuple[np.ndarray, KeySet]] = []  # (keys, their KeySet), oldest and largest first

    def add(self, keys: np.ndarray) -> None:
        keys = keys.reshape(-1, 2)
        while self.levels and len(self.levels[-1][0]) <= len(keys):
            keys = np.concatenate([self.levels.pop()[0], keys])
        if len(keys):
            self.levels.append((keys, KeySet(keys)))

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys.reshape(-1, 2)), bool)
        for _, level in self.levels:
            found |= level.contains(keys)
        return found


@dataclass
class OutputState:
    """What OUTPUT holds: every committed image's key, and the error rows that may be redone."""

    finished: KeySet
    rows: int
    files: int
    # key bytes -> (image_uri, part file) of error rows to redo if they are listed again
    redo_candidates: dict[bytes, tuple[str, str]] = field(default_factory=dict)


def scan_output(output: Output, retry_all_errors: bool = False) -> OutputState:
    """Read the `image_uri`, `error` and `error_retryable` columns of every live part, one file at a time."""
    fs = output.fs
    files = list_part_files(output)
    chunks: list[np.ndarray] = []
    candidates: dict[bytes, tuple[str, str]] = {}
    rows = 0
    for file in files:
        table = read_parquet(fs, file, ["image_uri", "error", "error_retryable"])
        keys = uri_keys(table.column("image_uri"))
        chunks.append(keys)
        rows += table.num_rows
        errors = table.column("error")
        if errors.null_count == table.num_rows:
            continue
        has_error = errors.is_valid().to_numpy(zero_copy_only=False)
        if retry_all_errors:
            redo = has_error
        elif "error_retryable" in table.column_names:
            redo = has_error & table.column("error_retryable").fill_null(False).to_numpy(zero_copy_only=False)
        else:
            redo = np.zeros(table.num_rows, bool)  # written before errors said whether they may pass
        uris = table.column("image_uri")
        for i in np.flatnonzero(redo):
            candidates[keys[i].tobytes()] = (uris[int(i)].as_py(), file)
    finished = KeySet(np.concatenate(chunks) if chunks else np.zeros((0, 2), np.uint64))
    return OutputState(finished, rows, len(files), candidates)


@dataclass
class ResumePlan:
    """The outcome of streaming a listing past an OutputState."""

    listed: int = 0
    already_done: int = 0
    new: int = 0
    redo: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # candidates found in the listing


def filter_listing(chunks: Iterable[pa.Table], state: OutputState, plan: ResumePlan) -> Iterator[pa.Table]:
    """Yield each listing chunk (columns image_uri, image_id, ...) less the images OUTPUT holds, plus the error rows
    to redo. `plan` counts as it goes; its `redo` collects the rows to drop before the work starts."""
    for chunk in chunks:
        if not chunk.num_rows:
            continue
        keys = uri_keys(chunk.column("image_uri"))
        done = state.finished.contains(keys)
        if state.redo_candidates:
            for i in np.flatnonzero(done):
                key = keys[i].tobytes()
                if key in state.redo_candidates:
                    plan.redo[key] = state.redo_candidates[key]
                    done[i] = False
        plan.listed += chunk.num_rows
        plan.already_done += int(done.sum())
        fresh = chunk.filter(pa.array(~done))
        plan.new += fresh.num_rows
        if fresh.num_rows:
            yield fresh


def drop_redone_rows(output: Output, redo: dict[bytes, tuple[str, str]]) -> int:
    """Remove the rows about to be redone from their parts (one rewrite per part); returns rows dropped."""
    by_file: dict[str, set[str]] = defaultdict(set)
    for uri, file in redo.values():
        by_file[file].add(uri)
    return sum(drop_rows(output, file, uris) for file, uris in by_file.items())
