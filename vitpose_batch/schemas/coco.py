"""COCO forms of the prediction rows. Pure conversions: no Ray.

Two COCO shapes are written here (box files, the third, are read by `vitpose_batch.schemas.box_files`):

* **keypoint results** (`coco_results`): the list pycocotools' ``COCO.loadRes`` / ``COCOeval`` reads,
  ``{image_id, category_id: 1, keypoints: [x, y, score] * K, score, bbox}`` per person;
* **keypoint dataset** (`coco_dataset`): a full ``{info, licenses, categories, images, annotations}`` file with
  visibility flags, which pycocotools, CVAT and Label Studio import as labels to review;

Streaming. Prediction tables come one part file at a time; neither writer holds all rows. `coco_results` is a
generator (one dict per person) and `write_json_stream` writes a JSON array item by item. `coco_dataset` makes ONE
pass over the tables (so they may be a plain generator such as `vitpose_batch.files.storage.iter_prediction_tables`) and spools
images and annotations, as compact JSON lines, to two anonymous temporary files; when the pass ends it yields the
finished document: header, categories, images (from the first spool), annotations (from the second). One pass lets
it (a) put `categories` first even when the keypoint set is only known from the first person seen, and (b) give rows
without any image id an id above every id the pass saw, so ids never collide. Temporary disk use is about the size of
the output; memory is one table plus a set of the image ids seen (duplicates are dropped, first row wins).

Counting. Both converters take an optional `ExportStats` and update it while they run (they are generators, so a
returned count would only exist after the last item); read it after the iteration ends.

Numbers are written rounded: coordinates to 1/1000 pixel, scores to 6 decimals, which is below float32 resolution
for image-sized coordinates and keeps the JSON about three times smaller than full float repr.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from vitpose_batch.files.addresses import image_id_from_uri, image_name
from vitpose_core.keypoint_sets import COCO, KeypointSet, get_keypoint_set, keypoint_set_for_count

__all__ = [
    "PERSON_CATEGORY_ID",
    "ExportStats",
    "PredictionRow",
    "coco_dataset",
    "coco_results",
    "iter_prediction_rows",
    "person_category",
    "write_coco_dataset",
    "write_json_stream",
]

PERSON_CATEGORY_ID = 1
COORD_DECIMALS = 3
SCORE_DECIMALS = 6



# ----------------------------------------------------------------------------------------------------------------
# Categories
# ----------------------------------------------------------------------------------------------------------------


def person_category(keypoint_set: KeypointSet = COCO) -> dict:
    """COCO category 1 "person" with the set's keypoint names and its skeleton as COCO writes it (1-based)."""
    return {
        "supercategory": "person",
        "id": PERSON_CATEGORY_ID,
        "name": "person",
        "keypoints": list(keypoint_set.keypoint_names),
        "skeleton": [[a + 1, b + 1] for a, b in keypoint_set.skeleton],
    }


# ----------------------------------------------------------------------------------------------------------------
# Prediction rows
# ----------------------------------------------------------------------------------------------------------------


class PredictionRow(NamedTuple):
    """One prediction row with its persons as arrays."""

    image_uri: str
    image_id: int | None
    width: int
    height: int
    error: str | None
    boxes: np.ndarray  # (n, 4) float32 xywh
    box_scores: np.ndarray  # (n,)
    scores: np.ndarray  # (n,)
    keypoints: list[np.ndarray]  # n arrays (K, 3): x, y, score; a list so a row of mixed K stays representable


@dataclass
class _Batch:
    """One record batch decoded column-wise: P persons over all rows, their keypoints stacked (Nk, 3)."""

    uris: list[str]
    ids: list[int | None]
    widths: list[int]
    heights: list[int]
    errors: list[str | None]
    person_offsets: np.ndarray  # (rows + 1,) persons of row r: person_offsets[r]:person_offsets[r + 1]
    boxes: np.ndarray  # (P, 4) float32
    box_scores: np.ndarray  # (P,) float32
    scores: np.ndarray  # (P,) float32
    keypoint_offsets: np.ndarray  # (P + 1,) keypoints of person p: keypoint_offsets[p]:keypoint_offsets[p + 1]
    keypoints: np.ndarray  # (Nk, 3) float32

    def __len__(self) -> int:
        return len(self.uris)


def _column(batch: pa.RecordBatch, name: str) -> pa.Array | None:
    index = batch.schema.get_field_index(name)
    return batch.column(index) if index >= 0 else None


def _float_numpy(array: pa.Array) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float32)


def _decode_batch(batch: pa.RecordBatch) -> _Batch:
    n = batch.num_rows
    uris = _column(batch, "image_uri")
    if uris is None:
        raise ValueError("prediction table has no image_uri column")

    def listed(name: str, default: Any) -> list:
        column = _column(batch, name)
        return column.to_pylist() if column is not None else [default] * n

    persons = _column(batch, "persons")
    if persons is None or n == 0:
        empty = np.zeros(0, np.float32)
        return _Batch(uris.to_pylist(), listed("image_id", None), listed("width", 0), listed("height", 0),
                      listed("error", None), np.zeros(n + 1, np.int64), np.zeros((0, 4), np.float32), empty, empty,
                      np.zeros(1, np.int64), np.zeros((0, 3), np.float32))
    # List offsets are those of this (possibly sliced) array; children are indexed by them unsliced.
    offsets = np.asarray(persons.offsets, dtype=np.int64)
    p0, p1 = int(offsets[0]), int(offsets[-1])
    children = dict(zip([f.name for f in persons.type.value_type], persons.values.flatten()))
    boxes = _float_numpy(children["bbox"].slice(p0, p1 - p0).flatten()).reshape(-1, 4)
    box_scores = _float_numpy(children["box_score"].slice(p0, p1 - p0))
    scores = _float_numpy(children["score"].slice(p0, p1 - p0))
    keypoints = children["keypoints"].slice(p0, p1 - p0)
    kp_offsets = np.asarray(keypoints.offsets, dtype=np.int64)
    k0, k1 = int(kp_offsets[0]), int(kp_offsets[-1])
    lengths = np.diff(kp_offsets)
    if (lengths % 3).any():
        bad = int(np.flatnonzero(lengths % 3)[0])
        row = int(np.searchsorted(offsets - p0, bad, side="right")) - 1
        raise ValueError(f"{uris[row]}: a person has {int(lengths[bad])} keypoint values, not a multiple of 3")
    values = _float_numpy(keypoints.values.slice(k0, k1 - k0)).reshape(-1, 3)
    return _Batch(uris.to_pylist(), listed("image_id", None), listed("width", 0), listed("height", 0),
                  listed("error", None), offsets - p0, boxes, box_scores, scores, (kp_offsets - k0) // 3, values)


def _iter_batches(tables: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[_Batch]:
    for table in tables:
        for batch in [table] if isinstance(table, pa.RecordBatch) else table.to_batches():
            yield _decode_batch(batch)


def iter_prediction_rows(tables: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[PredictionRow]:
    """Every row of an iterable of prediction tables (PREDICTION_SCHEMA), one record batch in memory at a time."""
    for b in _iter_batches(tables):
        for r in range(len(b)):
            lo, hi = int(b.person_offsets[r]), int(b.person_offsets[r + 1])
            kps = [b.keypoints[b.keypoint_offsets[p]:b.keypoint_offsets[p + 1]] for p in range(lo, hi)]
            yield PredictionRow(b.uris[r], b.ids[r], int(b.widths[r] or 0), int(b.heights[r] or 0), b.errors[r],
                                b.boxes[lo:hi], b.box_scores[lo:hi], b.scores[lo:hi], kps)


# ----------------------------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ExportStats:
    """What a conversion did. `images`: images written (results: rows that contributed, persons or not);
    `persons`: persons written; `skipped_*`: rows left out, by reason; `persons_below_score`: persons under
    min_person_score; `keypoints_unlabelled`: dataset keypoints under min_keypoint_score (or non-finite) written
    as (0, 0, 0); `assigned_image_ids`: dataset rows without an id that were given one."""

    rows: int = 0
    images: int = 0
    persons: int = 0
    skipped_error: int = 0
    skipped_no_image_id: int = 0
    skipped_duplicate_image_id: int = 0
    persons_below_score: int = 0
    keypoints_unlabelled: int = 0
    assigned_image_ids: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Keypoint results
# ----------------------------------------------------------------------------------------------------------------


def _finite(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, 0.0)


def _rounded(values: np.ndarray, decimals: int) -> np.ndarray:
    return np.round(_finite(np.asarray(values, np.float64)), decimals)


class _Known(NamedTuple):
    """Per-person values of one batch as Python lists (converted once per batch, not per person)."""

    raw_scores: list[float]
    scores: list[float]
    box_scores: list[float]
    boxes: list[list[float]]
    keypoint_offsets: list[int]


def _known(b: _Batch) -> _Known:
    return _Known(b.scores.astype(np.float64).tolist(), _rounded(b.scores, SCORE_DECIMALS).tolist(),
                  _rounded(b.box_scores, SCORE_DECIMALS).tolist(), _rounded(b.boxes, COORD_DECIMALS).tolist(),
                  b.keypoint_offsets.tolist())


def _image_id(b: _Batch, r: int) -> int | None:
    value = b.ids[r]
    return int(value) if value is not None else image_id_from_uri(b.uris[r])


def _rows_without_error(b: _Batch, stats: ExportStats) -> Iterator[tuple[int, int | None]]:
    """(row, image id or None) of each row of `b` without an error; every row counted, error rows skipped (both
    writers' first step)."""
    for r in range(len(b)):
        stats.rows += 1
        if b.errors[r] is not None:
            stats.skipped_error += 1
            continue
        yield r, _image_id(b, r)


def coco_results(
    tables: Iterable[pa.Table | pa.RecordBatch],
    min_person_score: float = 0.0,
    stats: ExportStats | None = None,
) -> Iterator[dict]:
    """COCO keypoint results, one dict per person: `{image_id, category_id: 1, keypoints, score, bbox, box_score}`.

    Rows with an error, rows without an image id (`image_id_of`) and repeats of an image id already converted are
    skipped; persons with score < min_person_score are left out. Pass an `ExportStats` to get the counts (filled
    while the generator runs)."""
    stats = stats if stats is not None else ExportStats()
    seen: set[int] = set()
    for b in _iter_batches(tables):
        kp = np.asarray(b.keypoints, np.float64).copy()
        kp[~np.isfinite(kp).all(axis=1)] = 0.0
        kp[:, :2] = np.round(kp[:, :2], COORD_DECIMALS)
        kp[:, 2] = np.round(kp[:, 2], SCORE_DECIMALS)
        flat = kp.reshape(-1).tolist()
        known = _known(b)
        offsets = b.person_offsets.tolist()
        for r, image_id in _rows_without_error(b, stats):
            if image_id is None:
                stats.skipped_no_image_id += 1
                continue
            if image_id in seen:
                stats.skipped_duplicate_image_id += 1
                continue
            seen.add(image_id)
            stats.images += 1
            for p in range(offsets[r], offsets[r + 1]):
                if not known.raw_scores[p] >= min_person_score:
                    stats.persons_below_score += 1
                    continue
                stats.persons += 1
                yield {
                    "image_id": image_id,
                    "category_id": PERSON_CATEGORY_ID,
                    "keypoints": flat[3 * known.keypoint_offsets[p]:3 * known.keypoint_offsets[p + 1]],
                    "score": known.scores[p],
                    "bbox": known.boxes[p],
                    "box_score": known.box_scores[p],  # the detector's; rescoring (evaluate) starts from it
                }


def _dumps(item: Any) -> str:
    return json.dumps(item, separators=(",", ":"), allow_nan=False)


def _is_text(handle: Any) -> bool:
    return isinstance(handle, io.TextIOBase)


def write_json_stream(items: Iterable[Any], handle: Any) -> int:
    """Write `items` as one JSON array to a text or binary handle, item by item; returns the number written."""
    text = _is_text(handle)

    def put(chunk: str) -> None:
        handle.write(chunk if text else chunk.encode("utf-8"))

    count = 0
    put("[")
    for item in items:
        put(("\n" if count == 0 else ",\n") + _dumps(item))
        count += 1
    put("\n]\n" if count else "]\n")
    return count


# ----------------------------------------------------------------------------------------------------------------
# Keypoint dataset (labels to review in CVAT / Label Studio)
# ----------------------------------------------------------------------------------------------------------------


def _spool_line(ref: str, fields: dict) -> str:
    # `ref` is "k<id>" (known image id) or "d<n>" (the n-th row without an id, resolved when the pass is over).
    return f"{ref}\t{_dumps(fields)}\n"


def _resolve(ref: str, first_assigned: int) -> int:
    return int(ref[1:]) if ref[0] == "k" else first_assigned + int(ref[1:])


def coco_dataset(
    tables: Iterable[pa.Table | pa.RecordBatch] | Callable[[], Iterable[pa.Table | pa.RecordBatch]],
    min_person_score: float = 0.0,
    min_keypoint_score: float = 0.0,
    keypoint_set: KeypointSet | str | int | None = None,
    stats: ExportStats | None = None,
    spool_dir: str | None = None,
) -> Iterator[str]:
    """A COCO keypoints dataset, yielded as chunks of JSON text (write them in order; `write_coco_dataset` does).

    images: `{id, file_name, width, height, image_uri}` for every row without an error, persons or not (a labeller
    sees them); `file_name` is `image_name(image_uri)`, `image_uri` keeps where it came from. Rows without an image id
    get ids above the largest id seen. annotations: `{id, image_id, category_id: 1, bbox, area: w*h, iscrowd: 0,
    keypoints: [x, y, v] * K, num_keypoints, score, segmentation: []}` with v=2 for keypoints scored >=
    min_keypoint_score and (0, 0, 0) otherwise; persons under min_person_score are left out. categories: person
    with `keypoint_set` names and 1-based skeleton (None: chosen by the K of the first person, COCO when there are
    none). `tables` may be an iterable or a callable returning one; it is read once (see the module docstring).
    """
    stats = stats if stats is not None else ExportStats()
    kset = None if keypoint_set is None else (
        keypoint_set if isinstance(keypoint_set, KeypointSet) else get_keypoint_set(keypoint_set)
    )
    source = tables() if callable(tables) else tables
    images_spool = tempfile.TemporaryFile("w+", encoding="utf-8", dir=spool_dir)
    anns_spool = tempfile.TemporaryFile("w+", encoding="utf-8", dir=spool_dir)
    try:
        seen: set[int] = set()
        max_id = 0
        assigned = 0
        ann_id = 0
        for b in _iter_batches(source):
            known = _known(b)
            lengths = np.diff(b.keypoint_offsets)
            if kset is None and len(lengths):
                kset = keypoint_set_for_count(int(lengths[0]))
            if kset is not None and (lengths != kset.num_keypoints).any():
                bad = int(np.flatnonzero(lengths != kset.num_keypoints)[0])
                row = int(np.searchsorted(b.person_offsets, bad, side="right")) - 1
                raise ValueError(f"{b.uris[row]}: a person has {int(lengths[bad])} keypoints, the dataset's keypoint "
                                 f"set {kset.name} has {kset.num_keypoints}")
            kp = np.asarray(b.keypoints, np.float64)
            with np.errstate(invalid="ignore"):
                keep = np.isfinite(kp).all(axis=1) & (kp[:, 2] >= min_keypoint_score)
            out = np.zeros_like(kp)
            out[keep, :2] = np.round(kp[keep, :2], COORD_DECIMALS)
            flat: list = out.reshape(-1).tolist()
            flat[2::3] = [2 if k else 0 for k in keep.tolist()]
            counted = np.concatenate([[0], np.cumsum(keep)])
            labelled = (counted[b.keypoint_offsets[1:]] - counted[b.keypoint_offsets[:-1]]).tolist()
            boxes = np.asarray(known.boxes, np.float64).reshape(-1, 4)
            areas = np.round(np.abs(boxes[:, 2] * boxes[:, 3]), COORD_DECIMALS).tolist()
            offsets = b.person_offsets.tolist()
            for r, image_id in _rows_without_error(b, stats):
                if image_id is None:
                    ref = f"d{assigned}"
                    assigned += 1
                    stats.assigned_image_ids += 1
                else:
                    if image_id in seen:
                        stats.skipped_duplicate_image_id += 1
                        continue
                    seen.add(image_id)
                    max_id = max(max_id, image_id)
                    ref = f"k{image_id}"
                stats.images += 1
                images_spool.write(_spool_line(ref, {
                    "file_name": image_name(b.uris[r]), "width": int(b.widths[r] or 0),
                    "height": int(b.heights[r] or 0), "image_uri": b.uris[r],
                }))
                for p in range(offsets[r], offsets[r + 1]):
                    if not known.raw_scores[p] >= min_person_score:
                        stats.persons_below_score += 1
                        continue
                    lo, hi = known.keypoint_offsets[p], known.keypoint_offsets[p + 1]
                    ann_id += 1
                    stats.persons += 1
                    stats.keypoints_unlabelled += (hi - lo) - labelled[p]
                    anns_spool.write(_spool_line(ref, {
                        "id": ann_id, "category_id": PERSON_CATEGORY_ID, "bbox": known.boxes[p],
                        "area": areas[p], "iscrowd": 0, "keypoints": flat[3 * lo:3 * hi],
                        "num_keypoints": labelled[p], "score": known.scores[p], "segmentation": [],
                    }))
        first_assigned = max_id + 1
        categories = [person_category(kset if kset is not None else COCO)]
        yield ('{"info":{"description":"vitpose-batch keypoint predictions","version":"1.0"},'
               '"licenses":[],"categories":' + _dumps(categories) + ',"images":[')
        yield from _emit(images_spool, "id", first_assigned)
        yield '],"annotations":['
        yield from _emit(anns_spool, "image_id", first_assigned)
        yield "]}\n"
    finally:
        images_spool.close()
        anns_spool.close()


def _emit(spool: Any, key: str, first_assigned: int, chunk_lines: int = 2048) -> Iterator[str]:
    """Spooled `ref\\t{...}` lines -> `{"<key>":<id>,...}` objects joined by commas, in chunks."""
    spool.seek(0)
    parts: list[str] = []
    first = True
    for line in spool:
        ref, _, body = line.rstrip("\n").partition("\t")
        parts.append(("" if first else ",\n") + f'{{"{key}":{_resolve(ref, first_assigned)},' + body[1:])
        first = False
        if len(parts) >= chunk_lines:
            yield "".join(parts)
            parts = []
    if parts:
        yield "".join(parts)


def write_coco_dataset(tables: Any, handle: Any, **options: Any) -> ExportStats:
    """`coco_dataset(tables, **options)` written to a text or binary handle; returns its ExportStats."""
    stats = options.pop("stats", None) or ExportStats()
    text = _is_text(handle)
    for chunk in coco_dataset(tables, stats=stats, **options):
        handle.write(chunk if text else chunk.encode("utf-8"))
    return stats
