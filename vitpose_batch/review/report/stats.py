"""The report's one streamed pass, in pieces: per-part statistics folded into fixed-size or capped counters
(`Stats`), error messages grouped by kind (`error_kind`), and the videos' frames and tracks
(`vitpose_batch.review.video_tally.VideoTally`: exact
distinct counts, so it grows with the number of videos and tracks, never with the rows)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vitpose_batch.review.video_tally import VideoTally

COLUMNS = ("image_uri", "width", "height", "persons", "error", "video_uri", "frame_index")  # all it reads of a part
SCORE_BINS = 50  # person-score histogram bins over [0, 1]
KEYPOINT_BINS = 20  # keypoint-score bins over [0, 1], per joint
MAX_PERSONS_BIN = 20  # persons per image: 0 .. 19 counted exactly, 20 or more together
MAX_ERROR_KINDS = 50
ERROR_EXAMPLES = 3
LOW_THRESHOLDS = (0.3, 0.5, 0.7)


def error_kind(message: str) -> str:
    """A normalised kind for an error message: the text before the first ':', numbers as N (so "image too large
    (40,000,000 pixels ...)" of two images is one kind), at most 80 characters."""
    head = message.split(":", 1)[0]
    head = re.sub(r"\d[\d,._]*", "N", head)
    head = " ".join(head.split())
    return head[:80] or "(empty message)"


@dataclass
class ErrorKind:
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Stats:
    """What one streaming pass over the parts collects; every field is fixed-size or capped."""

    parts: int = 0
    images: int = 0
    persons: int = 0
    errors: int = 0
    empty_images: int = 0  # processed without error, no person found
    error_kinds: dict[str, ErrorKind] = field(default_factory=dict)
    other_errors: int = 0  # rows whose kind came after MAX_ERROR_KINDS kinds
    person_scores: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS, np.int64))
    scores_outside: int = 0  # person scores outside [0, 1] (counted in the end bins) or not finite (left out)
    keypoint_scores: np.ndarray | None = None  # (K, KEYPOINT_BINS) once a person was seen
    keypoints_skipped: int = 0  # persons whose keypoint count differs from the first person's
    persons_per_image: np.ndarray = field(default_factory=lambda: np.zeros(MAX_PERSONS_BIN + 1, np.int64))
    below: dict[float, int] = field(default_factory=lambda: {t: 0 for t in LOW_THRESHOLDS})
    keypoint_names: list[str] = field(default_factory=list)
    keypoint_set: str | None = None
    part_provenance: dict | None = None  # the first part's, for an OUTPUT without _job.json (one .parquet file)
    video: VideoTally = field(default_factory=VideoTally)  # videos, frames, tracks (all 0 for images only)


def binned(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin indices of `values` in [0, 1] split into `bins` equal bins; values outside go to the end bins."""
    return np.minimum((np.clip(values, 0.0, 1.0) * bins).astype(np.int64), bins - 1)  # clip first: no overflow


def flat_persons(table: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """(persons per row, the persons of all rows as one struct array) of a prediction table."""
    persons = table.column("persons").combine_chunks()
    counts = pc.fill_null(pc.list_value_length(persons), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return counts, pc.list_flatten(persons)


def person_scores_of(flat: pa.Array) -> np.ndarray:
    return pc.struct_field(flat, "score").to_numpy(zero_copy_only=False).astype(np.float64)


def keypoints_of(flat: pa.Array, num_keypoints: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints (P', K, 3) of the persons with K keypoints, their mask over all P persons). K defaults to the
    first person's; a person with another count (only possible in hand-written rows) is left out."""
    column = pc.struct_field(flat, "keypoints")
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
    if not len(lengths):
        return np.zeros((0, num_keypoints or 0, 3), np.float32), np.zeros(0, bool)
    k = num_keypoints or int(lengths[0]) // 3
    keep = lengths == 3 * k
    if k == 0:  # persons without keypoints: nothing to histogram
        return np.zeros((0, 0, 3), np.float32), np.zeros(len(lengths), bool)
    if keep.all():
        return values.reshape(-1, k, 3), keep
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = [values[s:s + 3 * k] for s in starts[keep]]
    return (np.stack(rows).reshape(-1, k, 3) if rows else np.zeros((0, k, 3), np.float32)), keep


def add_errors(stats: Stats, table: pa.Table) -> None:
    """Count the part's error rows by kind; take example URIs until each kind has ERROR_EXAMPLES."""
    errors = table.column("error")
    stats.errors += len(errors) - errors.null_count
    if errors.null_count == len(errors):
        return
    counted = pc.value_counts(pc.drop_null(errors))
    for message, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
        kind = error_kind(message)
        if kind not in stats.error_kinds and len(stats.error_kinds) >= MAX_ERROR_KINDS:
            stats.other_errors += count
            continue
        entry = stats.error_kinds.setdefault(kind, ErrorKind())
        entry.count += count
        if len(entry.examples) < ERROR_EXAMPLES:  # at most ERROR_EXAMPLES filters per kind over the whole run
            uris = pc.filter(table.column("image_uri"), pc.equal(errors, message))
            entry.examples += uris.slice(0, ERROR_EXAMPLES - len(entry.examples)).to_pylist()


def add_persons(stats: Stats, counts: np.ndarray, valid_rows: np.ndarray, flat: pa.Array) -> np.ndarray:
    """Fold the part's persons into the histograms and counters; returns their scores (for the samples)."""
    stats.persons += int(counts.sum())
    shown = counts[valid_rows]
    stats.empty_images += int((shown == 0).sum())
    stats.persons_per_image += np.bincount(np.minimum(shown, MAX_PERSONS_BIN), minlength=MAX_PERSONS_BIN + 1)
    scores = person_scores_of(flat)
    finite = np.isfinite(scores)
    stats.scores_outside += int((~finite | (scores < 0) | (scores > 1)).sum())
    stats.person_scores += np.bincount(binned(scores[finite], SCORE_BINS), minlength=SCORE_BINS)
    for threshold in stats.below:
        stats.below[threshold] += int((scores[finite] < threshold).sum())
    num_keypoints = None if stats.keypoint_scores is None else stats.keypoint_scores.shape[0]
    keypoints, keep = keypoints_of(flat, num_keypoints)
    stats.keypoints_skipped += int((~keep).sum())
    if len(keypoints):
        k = keypoints.shape[1]
        if stats.keypoint_scores is None:
            stats.keypoint_scores = np.zeros((k, KEYPOINT_BINS), np.int64)
        kp_scores = keypoints[..., 2]
        joint = np.broadcast_to(np.arange(k), kp_scores.shape)
        ok = np.isfinite(kp_scores)
        cells = joint[ok] * KEYPOINT_BINS + binned(kp_scores[ok], KEYPOINT_BINS)
        stats.keypoint_scores += np.bincount(cells, minlength=k * KEYPOINT_BINS).reshape(k, KEYPOINT_BINS)
    return scores


def read_part_metadata(stats: Stats, table: pa.Table) -> None:
    """Keypoint names, set and provenance from a part's Parquet schema metadata (the first part that has them)."""
    metadata = table.schema.metadata or {}
    if not stats.keypoint_names and b"vitpose.keypoint_names" in metadata:
        stats.keypoint_names = json.loads(metadata[b"vitpose.keypoint_names"])
    if stats.keypoint_set is None and b"vitpose.keypoint_set" in metadata:
        stats.keypoint_set = metadata[b"vitpose.keypoint_set"].decode()
    if stats.part_provenance is None and b"vitpose.provenance" in metadata:
        stats.part_provenance = json.loads(metadata[b"vitpose.provenance"])
