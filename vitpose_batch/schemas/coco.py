"""COCO forms of the prediction rows, and COCO box files read as person boxes. Pure conversions: no Ray.

Three COCO shapes meet here:

* **keypoint results** (`coco_results`): the list pycocotools' ``COCO.loadRes`` / ``COCOeval`` reads,
  ``{image_id, category_id: 1, keypoints: [x, y, score] * K, score, bbox}`` per person;
* **keypoint dataset** (`coco_dataset`): a full ``{info, licenses, categories, images, annotations}`` file with
  visibility flags, which pycocotools, CVAT and Label Studio import as labels to review;
* **box files** (`load_boxes`): a COCO annotation file or a COCO detection-results file giving person boxes per image.

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
import math
import posixpath
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from vitpose_core.keypoint_sets import COCO, KeypointSet, get_keypoint_set

__all__ = [
    "PERSON_CATEGORY_ID",
    "BoxIndex",
    "ExportStats",
    "PredictionRow",
    "coco_dataset",
    "coco_results",
    "image_id_from_uri",
    "image_id_of",
    "image_name",
    "iter_prediction_rows",
    "load_boxes",
    "person_category",
    "split_image_uri",
    "write_coco_dataset",
    "write_json_stream",
]

PERSON_CATEGORY_ID = 1
COORD_DECIMALS = 3
SCORE_DECIMALS = 6

# `shard#member` only when the part before '#' is a shard: a '#' elsewhere is part of an ordinary file name.
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


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
# Image URIs -> names and ids
# ----------------------------------------------------------------------------------------------------------------


def split_image_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`(shard_or_file_uri, member, kind)`: kind "tar" (member = name inside the tar), "parquet" (member = row
    index as text) or None for a plain image file (member None)."""
    start = 0
    while (pos := uri.find("#", start)) >= 0:
        base, member = uri[:pos], uri[pos + 1:]
        lowered = base.lower()
        if lowered.endswith(TAR_SUFFIXES):
            return base, member, "tar"
        if lowered.endswith(PARQUET_SUFFIXES):
            return base, member, "parquet"
        start = pos + 1
    return uri, None, None


def image_name(uri: str) -> str:
    """A file name for the image behind `uri`: the basename of a plain file or of a tar member, and
    `<shard stem>-<row>` for a Parquet row (which has no name of its own)."""
    base, member, kind = split_image_uri(uri)
    if kind == "parquet":
        stem = posixpath.basename(base.rstrip("/"))
        for suffix in PARQUET_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return f"{stem}-{member}"
    return posixpath.basename((member if kind == "tar" else base).replace("\\", "/").rstrip("/"))


def _integer_stem(name: str) -> int | None:
    """785 for `.../000000000785.jpg`; None for other names and for bare numbers without an extension (those are
    row indices, such as the `#12` of a Parquet row, not file names)."""
    stem, ext = posixpath.splitext(posixpath.basename(name.replace("\\", "/")))
    return int(stem) if ext and stem.isascii() and stem.isdigit() else None


def image_id_from_uri(uri: str) -> int | None:
    """COCO's naming convention read back from a URI: `.../000000000785.jpg` -> 785 (for a tar member, its member
    name); None when the name is not an integer, and always None for Parquet rows (their `#n` is a row index)."""
    _, member, kind = split_image_uri(uri)
    if kind == "parquet":
        return None
    return _integer_stem(member if kind == "tar" else uri)


def image_id_of(row: Mapping[str, Any]) -> int | None:
    """The row's `image_id`, else the integer stem of its image's basename (see `image_id_from_uri`), else None."""
    value = row.get("image_id")
    if value is not None:
        return int(value)
    uri = row.get("image_uri")
    return image_id_from_uri(uri) if uri else None


# ----------------------------------------------------------------------------------------------------------------
# Person boxes from COCO files
# ----------------------------------------------------------------------------------------------------------------

_EMPTY_BOXES = np.zeros((0, 4), np.float32)
_EMPTY_SCORES = np.zeros(0, np.float32)


class BoxIndex:
    """Person boxes per image, looked up by image id or by file name.

    File names resolve through the `images` list of the file (or the one given to `load_boxes`): first the name as
    given (a COCO `file_name` may hold folders), then its basename. A basename that two images share is ambiguous
    and refused. Without any image list (a bare detection-results file), a name whose basename stem is an integer
    means that image id (COCO's `000000000785.jpg` <-> 785).
    """

    def __init__(
        self,
        boxes: dict[int, np.ndarray],
        scores: dict[int, np.ndarray],
        names: dict[str, int] | None,
        ambiguous: set[str] | None = None,
        source: str = "",
    ) -> None:
        self._boxes = boxes
        self._scores = scores
        self._names = names  # None: no image list, integer stems name images
        self._ambiguous = ambiguous or set()
        self._known_ids = set((names or {}).values())
        self.source = source
        # unusable boxes left out when the file was read: {"reason", "image", "bbox", "where"} (the item) each
        self.dropped: list[dict] = []

    def __len__(self) -> int:
        """Number of images with at least one box."""
        return len(self._boxes)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(b) for b in self._boxes.values()))

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images that have boxes, sorted."""
        return sorted(self._boxes)

    def image_id_for(self, file_name: str) -> int | None:
        """The image id `file_name` (a name, relative path, path or URI) stands for, or None."""
        if self._names is None:
            return _integer_stem(file_name)
        normalised = file_name.replace("\\", "/")
        if normalised in self._names:
            return self._names[normalised]
        base = posixpath.basename(normalised)
        if base in self._ambiguous:
            raise ValueError(
                f"{self.source}: several images are named {base!r}; give the path as the file's file_name has it"
            )
        return self._names.get(base)

    def knows(self, file_name: str | None = None, image_id: int | None = None) -> bool:
        """Whether the file speaks of this image at all: listed in its images[] (boxes or none), or given boxes."""
        if image_id is None and file_name is not None:
            image_id = self.image_id_for(file_name)
        if image_id is None:
            return False
        return int(image_id) in self._boxes or (self._names is not None and int(image_id) in self._known_ids)

    def name_for(self, uri: str) -> str:
        """The file name this index knows the image at `uri` by: `image_name(uri)`, except for a plain file whose
        own name merely contains a shard suffix and '#' (`a.tar#b.jpg`): its whole basename, when the index knows
        that and not the member reading."""
        name = image_name(uri)
        if "#" in uri:
            literal = posixpath.basename(uri.replace("\\", "/").rstrip("/"))
            if literal != name and not self.knows(file_name=name) and self.knows(file_name=literal):
                return literal
        return name

    def boxes_for(
        self, file_name: str | None = None, image_id: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (n, 4) float32 COCO xywh, scores (n,) float32) of one image; `image_id` wins when both are given.
        Empty (0, 4) / (0,) arrays for an image without boxes or one the index cannot name."""
        if image_id is None and file_name is not None:
            image_id = self.image_id_for(file_name)
        if image_id is None or int(image_id) not in self._boxes:
            return _EMPTY_BOXES.copy(), _EMPTY_SCORES.copy()
        key = int(image_id)
        return self._boxes[key].copy(), self._scores[key].copy()


def _bad(uri: str, problem: str) -> ValueError:
    return ValueError(f"boxes file {uri}: {problem}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_box(uri: str, where: str, item: Mapping, need_score: bool) -> str | None:
    """Refuse an item that is not a box at all (one line naming the file and item); return why a well-formed box is
    unusable ("not finite", "no area"), for it to be dropped on its own, or None."""
    bbox = item.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_number(v) for v in bbox)):
        raise _bad(uri, f"{where} has no bbox of 4 numbers (got {str(bbox)[:60]})")
    if not _number(item.get("image_id")):
        raise _bad(uri, f"{where} has no numeric image_id")
    if need_score:
        score = item.get("score")
        if not _number(score) or not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise _bad(uri, f"{where} has score {score!r}; scores must be finite numbers in [0, 1]")
    if not all(math.isfinite(v) for v in bbox):
        return "not finite"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return "no area"
    return None


def _name_map(uri: str, images: Sequence[Mapping]) -> tuple[dict[str, int], set[str]]:
    names: dict[str, int] = {}
    by_base: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, info in enumerate(images):
        if not isinstance(info, Mapping) or "file_name" not in info or "id" not in info:
            raise _bad(uri, f"images[{i}] lacks file_name or id")
        name = str(info["file_name"]).replace("\\", "/")
        image_id = int(info["id"])
        names[name] = image_id
        base = posixpath.basename(name)
        if by_base.get(base, image_id) != image_id:
            ambiguous.add(base)
        by_base[base] = image_id
    for base, image_id in by_base.items():
        if base not in ambiguous:
            names.setdefault(base, image_id)
    return names, ambiguous


def load_boxes(uri: str, images: Sequence[Mapping] | None = None) -> BoxIndex:
    """Person boxes from a COCO file read through fsspec (local path or any URL).

    * a COCO annotation file (a dict with `images` and `annotations`): the boxes of category 1, crowd boxes
      skipped, each with score 1.0; its `images` name the files (`images` given here is used instead when passed);
    * a COCO detection-results file (a JSON list of `{image_id, category_id, bbox, score}`): category 1 only;
      file names come from `images` (COCO image dicts, e.g. of a COCO JSON input) or, failing that, integer stems.

    Boxes are kept as written (xywh, float32), in file order; a box that is not finite or has no area is dropped on
    its own (listed in `index.dropped`), the image's other boxes kept. Scores must be finite and in [0, 1]. Anything
    else raises a one-line ValueError naming the file and the problem.
    """
    from vitpose_core.filesystems import open_uri

    try:
        with open_uri(uri, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise _bad(uri, "not found") from None
    except (OSError, ValueError) as exc:
        raise _bad(uri, f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(uri, f"is not JSON ({str(exc).splitlines()[0]})") from None

    box_lists: dict[int, list] = {}
    score_lists: dict[int, list] = {}
    dropped: list[str] = []
    if isinstance(data, dict):
        missing = [k for k in ("images", "annotations") if not isinstance(data.get(k), list)]
        if missing:
            raise _bad(uri, "neither a COCO annotation file (a dict needs 'images' and 'annotations' lists; "
                            f"missing {', '.join(missing)}) nor a detection-results list")
        file_images = data["images"] if images is None else images
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, Mapping):
                raise _bad(uri, f"annotations[{i}] is not an object")
            if ann.get("category_id") != PERSON_CATEGORY_ID or ann.get("iscrowd", 0):
                continue
            if problem := _check_box(uri, f"annotations[{i}]", ann, need_score=False):
                dropped.append({"reason": problem, "image": ann["image_id"], "bbox": ann["bbox"],
                                "where": f"annotations[{i}]"})
                continue
            box_lists.setdefault(int(ann["image_id"]), []).append(ann["bbox"])
            score_lists.setdefault(int(ann["image_id"]), []).append(1.0)
    elif isinstance(data, list):
        file_images = images
        for i, det in enumerate(data):
            if not isinstance(det, Mapping):
                raise _bad(uri, f"item {i} is not an object; expected COCO detection results "
                                "[{image_id, category_id, bbox, score}]")
            if "category_id" not in det:
                raise _bad(uri, f"item {i} has no category_id")
            if det["category_id"] != PERSON_CATEGORY_ID:
                continue
            if problem := _check_box(uri, f"item {i}", det, need_score=True):
                dropped.append({"reason": problem, "image": det["image_id"], "bbox": det["bbox"], "where": f"item {i}"})
                continue
            box_lists.setdefault(int(det["image_id"]), []).append(det["bbox"])
            score_lists.setdefault(int(det["image_id"]), []).append(det["score"])
    else:
        raise _bad(uri, f"neither a COCO annotation file nor a detection-results list (top level is "
                        f"{type(data).__name__})")

    names, ambiguous = (None, set()) if file_images is None else _name_map(uri, file_images)
    boxes = {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in box_lists.items()}
    scores = {k: np.asarray(v, np.float32).reshape(-1) for k, v in score_lists.items()}
    index = BoxIndex(boxes, scores, names, ambiguous, source=uri)
    file_names = {int(info["id"]): str(info["file_name"]) for info in file_images or ()}
    for box in dropped:  # named as people know the image: its file name when the file lists one
        box["image"] = file_names.get(int(box["image"]), f"image id {box['image']}")
    index.dropped = dropped
    return index


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
        for r in range(len(b)):
            stats.rows += 1
            if b.errors[r] is not None:
                stats.skipped_error += 1
                continue
            image_id = _image_id(b, r)
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
                kset = _set_for_k(int(lengths[0]))
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
            for r in range(len(b)):
                stats.rows += 1
                if b.errors[r] is not None:
                    stats.skipped_error += 1
                    continue
                image_id = _image_id(b, r)
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


def _set_for_k(k: int) -> KeypointSet:
    from vitpose_core.keypoint_sets import KEYPOINT_SETS

    for name in ("coco", "coco_wholebody", "mpii", "aic"):
        if KEYPOINT_SETS[name].num_keypoints == k:
            return KEYPOINT_SETS[name]
    raise ValueError(f"no known keypoint set has {k} keypoints; pass keypoint_set")


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
