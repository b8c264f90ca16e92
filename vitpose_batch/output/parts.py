"""Committing rows: right-sized live Parquet parts, with durable progress in between.

The files (named in `vitpose_batch.output.layout`, with the rest of OUTPUT's layout):

    part-<run>-<seq>.parquet          live rows: at least `rows_per_file` rows (or ~`bytes_per_file` bytes) each,
                                      fewer only in the last part of a run; zstd; provenance and keypoint names in
                                      the schema metadata
    _staging/<run>-<seq>-<chunk>.staged   rows committed since the last live part (Parquet bytes, hidden name)

The run's driver is the only writer (it holds the lease). Rows stream to it from the workers; every
`commit_interval` seconds what arrived is committed to `_staging/` (so a killed run loses at most that much work),
and once `rows_per_file` rows have arrived they are written as the live part `part-<run>-<seq>.parquet` and that
part's staged chunks are deleted. Every file is written whole or not at all (a temporary name then a rename on local
disks, one PUT on object stores), so after a crash at any point:

* staged chunks whose part exists were already folded into it: they are deleted;
* staged chunks whose part does not exist are the last committed rows of a killed run: they are written as that
  part (same name, so a crash during recovery repeats it harmlessly).

Either way each committed row is in exactly one live file.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vitpose_batch.defaults import (
    DEFAULT_BYTES_PER_FILE,
    DEFAULT_COMMIT_INTERVAL_S,
    DEFAULT_ROWS_PER_FILE,
)
from vitpose_batch.files.storage import is_local
from vitpose_batch.output.layout import (
    PART_PREFIX,
    PART_SUFFIX,
    STAGED_SUFFIX,
    Output,
    part_name,
)
from vitpose_batch.progress import reading

log = logging.getLogger("vitpose_batch")

ROW_GROUP_ROWS = 10_000


class PartFileError(ValueError):
    """A part file under OUTPUT cannot be read; the message names it."""


def write_parquet_atomic(fs, table: pa.Table, path: str) -> None:
    """Write one Parquet file (zstd) so that readers see all of it or none of it."""
    options = {"compression": "zstd", "row_group_size": ROW_GROUP_ROWS}
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        with fs.open(tmp, "wb") as handle:
            pq.write_table(table, handle, **options)
        fs.mv(tmp, path)
    else:
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, **options)
        fs.pipe_file(path, buffer.getvalue().to_pybytes())


def read_parquet(fs, path: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file, or PartFileError naming it. Single-threaded: pyarrow's thread pool reading from a Python
    file object can abort the interpreter at exit."""
    try:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            wanted = [c for c in columns if c in names] if columns else None
            table = parquet.read(columns=wanted, use_threads=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated, not Parquet, unreadable: name the file
        text = " ".join(str(exc).split())[:200]
        raise PartFileError(f"part file {fs.unstrip_protocol(path)} is unreadable ({type(exc).__name__}: {text}); "
                            "move it aside and re-run annotate to redo its images") from None
    return table


def list_part_files(output: Output) -> list[str]:
    """Live part files directly under OUTPUT, sorted; [] when its folder does not exist."""
    fs = output.fs
    fs.invalidate_cache(output.folder)  # object-store filesystems cache listings; parts may have landed since
    try:
        names = fs.ls(output.folder, detail=False)
    except FileNotFoundError:
        return []
    return sorted(n for n in names
                  if posixpath.basename(n).startswith(PART_PREFIX) and n.endswith(PART_SUFFIX))


def list_staged(output: Output) -> dict[tuple[str, int], list[str]]:
    """Staged chunks under OUTPUT, grouped by (run, part seq)."""
    fs, staging = output.fs, output.staging
    fs.invalidate_cache(staging)
    try:
        names = fs.ls(staging, detail=False)
    except FileNotFoundError:
        return {}
    groups: dict[tuple[str, int], list[str]] = defaultdict(list)
    for name in sorted(names):
        base = posixpath.basename(name)
        if not base.endswith(STAGED_SUFFIX):
            continue
        run, seq, _chunk = base[: -len(STAGED_SUFFIX)].rsplit("-", 2)
        groups[(run, int(seq))].append(name)
    return dict(groups)


def recover_staging(output: Output) -> int:
    """Fold every killed run's staged chunks into live parts (see the module docstring); returns rows recovered."""
    fs = output.fs
    recovered = 0
    for (run, seq), chunks in list_staged(output).items():
        live = output.part(run, seq)
        if not fs.exists(live):
            tables = [read_parquet(fs, c) for c in chunks]
            table = pa.concat_tables(tables, promote_options="default")
            write_parquet_atomic(fs, table, live)
            recovered += table.num_rows
            log.info("recovered %d committed rows of run %s into %s", table.num_rows, run, part_name(run, seq))
        for chunk in chunks:
            fs.rm(chunk)
    remove_temporaries(output)
    return recovered


def remove_temporaries(output: Output) -> None:
    """Delete `.tmp` files a killed local run left behind (never live data: they are not named `*.parquet`)."""
    if not output.is_local:
        return
    for sub in (output.folder, output.staging):
        try:
            names = output.fs.ls(sub, detail=False)
        except FileNotFoundError:
            continue
        for name in names:
            if name.endswith(".tmp"):
                output.fs.rm(name)


def with_metadata(table: pa.Table, metadata: dict[str, str]) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **{k.encode(): v.encode()
                                                                              for k, v in metadata.items()}})


def drop_rows(output: Output, file: str, uris: set[str]) -> int:
    """Rewrite live part `file` of OUTPUT without the rows whose image_uri is in `uris` (same name: atomic replace);
    a part left empty is deleted. Returns the rows dropped."""
    fs = output.fs
    table = read_parquet(fs, file)
    keep = pc.invert(pc.is_in(table.column("image_uri"), value_set=pa.array(sorted(uris), pa.string())))
    kept = table.filter(keep)
    dropped = table.num_rows - kept.num_rows
    if not dropped:
        return 0
    if kept.num_rows:
        write_parquet_atomic(fs, kept, file)
    else:
        fs.rm(file)
    return dropped


class PartWriter:
    """The driver's writer: `add(table)` as rows arrive, `close()` at the end (see the module docstring).

    `check` is called before every commit (the lease's check: a run that lost OUTPUT must not write to it).
    """

    def __init__(self, output: Output, run_id: str, schema: pa.Schema, metadata: dict[str, str],
                 rows_per_file: int = DEFAULT_ROWS_PER_FILE, bytes_per_file: int = DEFAULT_BYTES_PER_FILE,
                 commit_interval: float = DEFAULT_COMMIT_INTERVAL_S, check=lambda: None) -> None:
        self.output, self.fs = output, output.fs
        self.run_id, self.schema, self.check = run_id, schema, check
        self.metadata = metadata
        self.rows_per_file, self.bytes_per_file, self.commit_interval = rows_per_file, bytes_per_file, commit_interval
        self.seq, self.chunk = 0, 0
        self.pending: list[pa.Table] = []  # arrived, not yet committed anywhere
        self.staged: list[pa.Table] = []  # committed to _staging/ for the current part
        self.staged_files: list[str] = []
        self.last_commit = time.monotonic()
        self.totals = {"images": 0, "persons": 0, "errors": 0, "files": 0}
        self.arrivals: list[tuple[float, int]] = []  # (time, persons) per batch, for steady-state rates

    def _rows(self, tables: list[pa.Table]) -> int:
        return sum(t.num_rows for t in tables)

    def _bytes(self, tables: list[pa.Table]) -> int:
        return sum(t.nbytes for t in tables)

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        table = table.select(self.schema.names).cast(self.schema)
        persons = pc.sum(pc.list_value_length(table.column("persons"))).as_py() or 0
        self.totals["images"] += table.num_rows
        self.totals["persons"] += persons
        self.totals["errors"] += table.num_rows - table.column("error").null_count
        self.arrivals.append((time.monotonic(), persons))
        self.pending.append(table)
        current = self.pending + self.staged
        if self._rows(current) >= self.rows_per_file or self._bytes(current) >= self.bytes_per_file:
            self.write_part()
        elif time.monotonic() - self.last_commit >= self.commit_interval:
            self.stage()

    def stage(self) -> None:
        if not self.pending:
            return
        self.check()
        table = with_metadata(pa.concat_tables(self.pending), self.metadata)
        path = self.output.staged(self.run_id, self.seq, self.chunk)
        write_parquet_atomic(self.fs, table, path)
        self.staged.append(table)
        self.staged_files.append(path)
        self.pending = []
        self.chunk += 1
        self.last_commit = time.monotonic()

    def write_part(self) -> None:
        tables = self.staged + self.pending
        if not tables:
            return
        self.check()
        table = with_metadata(pa.concat_tables(tables), self.metadata)
        write_parquet_atomic(self.fs, table, self.output.part(self.run_id, self.seq))
        for path in self.staged_files:  # folded into the part just written
            self.fs.rm(path)
        self.totals["files"] += 1
        self.staged, self.staged_files, self.pending = [], [], []
        self.seq, self.chunk = self.seq + 1, 0
        self.last_commit = time.monotonic()

    def close(self) -> None:
        """Commit what is left as the run's last (possibly smaller) part."""
        self.write_part()

    def abort(self) -> None:
        """Stop without writing a part: commit what arrived to `_staging/` (the next run folds it in)."""
        try:
            self.stage()
        except Exception as exc:  # noqa: BLE001 - the failure being reported is the one that matters
            log.warning("could not commit the last %d rows: %s", self._rows(self.pending), exc)


def is_part_file(predictions: Output) -> bool:
    """Whether PREDICTIONS names one .parquet file rather than an OUTPUT folder."""
    return predictions.folder.endswith(PART_SUFFIX) and predictions.fs.isfile(predictions.folder)


def predictions_files(predictions: Output) -> tuple[str | None, list[str]]:
    """(OUTPUT folder, or None when PREDICTIONS is one .parquet file; the live part files to read), on
    `predictions.fs`."""
    if is_part_file(predictions):
        return None, [predictions.folder]
    return predictions.folder, list_part_files(predictions)


def iter_part_tables(predictions: Output | str, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """Stream the tables of an annotate OUTPUT (or of one .parquet file), one file at a time. `predictions`: an
    opened Output, or a local path / fsspec URL (opened here: this is a public reader)."""
    predictions = Output.open(predictions)
    _, files = predictions_files(predictions)
    yield from reading((read_parquet(predictions.fs, file, columns) for file in files), len(files))


def part_provenances(output: Output) -> list[dict | None]:
    """The provenance each live part was written with (its Parquet schema metadata; None for parts without)."""
    fs = output.fs
    found = []
    for file in list_part_files(output):
        try:
            with fs.open(file, "rb") as handle:
                metadata = pq.ParquetFile(handle).schema_arrow.metadata or {}
        except Exception as exc:  # noqa: BLE001
            raise PartFileError(f"part file {fs.unstrip_protocol(file)} is unreadable ({type(exc).__name__})") from None
        raw = metadata.get(b"vitpose.provenance")
        found.append(json.loads(raw) if raw else None)
    return found


def part_metadata(provenance: dict, keypoint_names: Sequence[str], keypoint_set: str, version: str,
                  run_id: str) -> dict[str, str]:
    """Parquet schema metadata of every live part: enough to read the rows without the job record."""
    return {"vitpose.provenance": json.dumps(provenance), "vitpose.keypoint_set": keypoint_set,
            "vitpose.keypoint_names": json.dumps(list(keypoint_names)), "vitpose.version": version,
            "vitpose.run_id": run_id}
