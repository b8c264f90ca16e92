"""Video prediction rows as PoseTrack 2018 annotation documents: one JSON document per video.

    docs = posetrack_videos(rows, COCO.keypoint_names, COCO.skeleton)    # {video_uri: document}
    paths = write_posetrack(rows, "out/posetrack", COCO.keypoint_names, COCO.skeleton)

`rows` is a pyarrow Table of prediction rows (`vitpose_batch.schemas.predictions`): a video's sampled frames are one
row each, with `video_uri`, `frame_index`, `timestamp_s`, `width`, `height`, `error` and `persons` (bbox, box_score,
score, keypoints = x, y, score per keypoint, track_id). Image rows (`video_uri` null) are ignored.

Format followed: the PoseTrack 2018 annotation files (one JSON per sequence, COCO-like), as written and read by the
benchmark's own tools, leonid-pishchulin/poseval `py/convert.py` (`Video.to_new` / `from_new`, `Person.from_new`,
`Image.from_new`) and `poseval/eval_helpers.py` (`load_data_dir`). Fields written, per document:

* `images`, one per sampled frame (error frames included), in frame order: `id`, `frame_id` (== `id`, as in
  PoseTrack 2018), `file_name` (`<video name>/<frame_index:06d>.jpg`, PoseTrack's `<sequence>/<frame>.jpg` shape:
  poseval takes the directory as the sequence and the stem as the frame number), `vid_id` (the video name, a
  string as PoseTrack's `"000342"`), `nframes` (the number of sampled frames in the document, PoseTrack's
  len(images)), `is_labeled` (true for frames that went through the model, even with no person found; false for
  error frames). `has_no_densepose` is not written. Extra keys (ignored by PoseTrack readers): `frame_index`,
  `timestamp_s`, `width`, `height`, and `error` on error frames.
* `annotations`, one per person: `id`, `image_id`, `category_id` (1), `track_id`, `bbox` (COCO xywh pixels),
  `keypoints` (3K: x, y, and the keypoint score in the third slot, as mmpose's PoseTrack results and COCO results
  write it; PoseTrack ground truth has a 0/1 visibility there), `scores` (the K keypoint scores: poseval's per-joint
  detection scores), `score` (person score). Extra: `box_score`.
* `categories`: `[{id: 1, name: "person", supercategory: "person", keypoints: keypoint_names, skeleton}]`, the
  skeleton as 1-based keypoint index pairs, as COCO and PoseTrack write it.

Ids: a call numbers its videos 1, 2, ... in `video_uri` order; a frame's image id is `video number * 10**8 +
frame_index`, an annotation id runs 1, 2, ... over the call (video, frame, person order), so the documents of one
call can be merged into one COCO-style file without id clashes.

Limits of poseval's own evaluation (which also needs PoseTrack's ground-truth files for the same frames): it wants
PoseTrack's 15/17 keypoint names (`head_bottom`, `head_top` in place of COCO's eyes), sequence directories named
like `000342_mpii_test`, and track ids below 10000, unique per frame. Our track ids (`birth frame_index * 1000 + n`)
pass the latter only with `track_ids="dense"`, which renumbers each video's tracks 0, 1, ... in order of first
appearance (ties by id). A person without a track id gets `track_id: null`.

Numbers are rounded as the COCO export rounds them (coordinates to 1/1000 pixel, scores to 6 decimals); non-finite
values are written as 0.

The helpers `video_names`, `rows_by_video`, `person_arrays_of` and `skeleton_indices` are shared with
`vitpose_batch.review.mmaction` and `vitpose_batch.review.video_render`.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vitpose_batch.files.storage import write_atomically
from vitpose_batch.schemas.coco import COORD_DECIMALS, SCORE_DECIMALS

__all__ = [
    "FRAME_ID_STRIDE",
    "PersonArrays",
    "person_arrays_of",
    "posetrack_videos",
    "rows_by_video",
    "skeleton_indices",
    "video_names",
    "write_posetrack",
]

# image id = video number * FRAME_ID_STRIDE + frame_index
FRAME_ID_STRIDE = 10**8

_VIDEO_COLUMNS = ("video_uri", "frame_index", "width", "height", "error", "persons")


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers: naming videos, grouping rows, persons as arrays
# ----------------------------------------------------------------------------------------------------------------


def _stem(uri: str) -> str:
    """The file stem of a video URI (no folders, query or extension), made safe as a file name."""
    path = unquote(urlsplit(uri).path) if "://" in uri else uri
    base = posixpath.basename(path.replace("\\", "/").rstrip("/"))
    stem = posixpath.splitext(base)[0] if not base.startswith(".") else base
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._")
    return stem or "video"


def video_names(video_uris: Iterable[str]) -> dict[str, str]:
    """A file-name-safe, unique name for each distinct video URI: its file stem (`s3://b/x/clip.mp4` -> `clip`;
    characters other than letters, digits, `.`, `_`, `-` become `_`).

    Stems shared by several URIs (compared case-insensitively, for case-insensitive file systems) get
    `-<first 8 hex digits of the URI's SHA-1>` appended, so the name of a URI depends only on the URI and on whether
    another URI of the set shares its stem, never on order. Returns {uri: name}."""
    uris = sorted(set(video_uris))
    stems = {uri: _stem(uri) for uri in uris}
    counts = Counter(stem.lower() for stem in stems.values())
    names = {}
    for uri in uris:
        stem = stems[uri]
        names[uri] = f"{stem}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}" if counts[stem.lower()] > 1 else stem
    if len({name.lower() for name in names.values()}) != len(names):  # a hashed name met a plain stem: full hashes
        names = {uri: f"{stems[uri]}-{hashlib.sha1(uri.encode()).hexdigest()}" if counts[stems[uri].lower()] > 1
                 else stems[uri] for uri in uris}
    return names


def _require_columns(rows: pa.Table, columns: Iterable[str]) -> None:
    if not isinstance(rows, pa.Table):
        raise TypeError(f"rows must be a pyarrow Table, got {type(rows).__name__}")
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise ValueError(f"rows lack the column(s) {', '.join(missing)} (have: {', '.join(rows.column_names)})")


def rows_by_video(rows: pa.Table, columns: Iterable[str] = _VIDEO_COLUMNS) -> dict[str, pa.Table]:
    """The video rows of `rows` grouped by `video_uri` (in URI order), each group sorted by `frame_index`.

    Image rows (`video_uri` null) are left out. ValueError when a column of `columns` is missing, or a video row has
    no `frame_index`, or two rows of one video share a `frame_index`."""
    _require_columns(rows, columns)
    videos = rows.filter(pc.is_valid(rows.column("video_uri")))
    if videos.num_rows == 0:
        return {}
    if videos.column("frame_index").null_count:
        bad = videos.filter(pc.is_null(videos.column("frame_index"))).column("video_uri")[0].as_py()
        raise ValueError(f"video {bad!r}: a row has no frame_index")
    order = pc.sort_indices(videos, sort_keys=[("video_uri", "ascending"), ("frame_index", "ascending")])
    videos = videos.take(order)
    uris = videos.column("video_uri").to_pylist()
    frames = videos.column("frame_index").to_numpy()
    groups: dict[str, pa.Table] = {}
    start = 0
    for end in range(1, len(uris) + 1):
        if end == len(uris) or uris[end] != uris[start]:
            seg = frames[start:end]
            repeated = seg[1:][seg[1:] == seg[:-1]]
            if len(repeated):
                raise ValueError(f"video {uris[start]!r}: frame_index {int(repeated[0])} appears in more than one row")
            groups[uris[start]] = videos.slice(start, end - start)
            start = end
    return groups


@dataclass(frozen=True)
class PersonArrays:
    """Every person of a table's rows, flattened (n persons over all rows, in row then list order).

    row: (n,) int64 index of the person's row; track_id: (n,) int64 (0 where null); has_track: (n,) bool;
    bbox: (n, 4) float32 COCO xywh pixels; box_score, score: (n,) float32 (NaN where null);
    keypoints: (n, K, 3) float32 x, y, score."""

    row: np.ndarray
    track_id: np.ndarray
    has_track: np.ndarray
    bbox: np.ndarray
    box_score: np.ndarray
    score: np.ndarray
    keypoints: np.ndarray

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[1])


def _floats(array: pa.Array) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float32)  # nulls -> NaN


def person_arrays_of(rows: pa.Table, num_keypoints: int | None = None) -> PersonArrays:
    """The persons of `rows` as arrays (see `PersonArrays`), without a Python object per person.

    num_keypoints: K every person must have (3K keypoint values); None takes K from the first person (0 when there
    is none). ValueError when a person's keypoint list has another length."""
    _require_columns(rows, ["persons"])
    persons = rows.column("persons").combine_chunks()
    if isinstance(persons, pa.ChunkedArray):  # pyarrow < 16 on an empty column
        persons = pa.concat_arrays(persons.chunks) if persons.num_chunks else pa.array([], persons.type)
    parents = np.asarray(pc.list_parent_indices(persons).to_numpy(zero_copy_only=False), np.int64)
    struct = persons.flatten()
    fields = dict(zip([f.name for f in struct.type], struct.flatten()))
    n = len(struct)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(fields["keypoints"]), 0).to_numpy(zero_copy_only=False),
                         np.int64)
    if num_keypoints is None:
        num_keypoints = int(lengths[0]) // 3 if n else 0
    wrong = np.flatnonzero(lengths != 3 * num_keypoints)
    if len(wrong):
        i = int(wrong[0])
        where = (repr(rows.column("image_uri")[int(parents[i])].as_py()) if "image_uri" in rows.column_names
                 else f"row {int(parents[i])}")
        raise ValueError(f"{where}: a person has {int(lengths[i])} keypoint values, expected "
                         f"{3 * num_keypoints} (x, y, score for {num_keypoints} keypoints)")
    keypoints = _floats(fields["keypoints"].flatten()).reshape(n, num_keypoints, 3)
    bbox_values = fields["bbox"]
    boxes = _floats(bbox_values.flatten()) if n else np.zeros(0, np.float32)
    if boxes.size != 4 * n:  # a null bbox: the flattened values skip it
        raise ValueError("every person needs a bbox of 4 numbers")
    tracks = fields.get("track_id")
    if tracks is None:
        track_id, has_track = np.zeros(n, np.int64), np.zeros(n, bool)
    else:
        has_track = np.asarray(pc.is_valid(tracks).to_numpy(zero_copy_only=False), bool)
        track_id = np.asarray(pc.fill_null(tracks, 0).to_numpy(zero_copy_only=False), np.int64)
    return PersonArrays(
        row=parents, track_id=track_id, has_track=has_track, bbox=boxes.reshape(n, 4),
        box_score=_floats(fields["box_score"]), score=_floats(fields["score"]), keypoints=keypoints,
    )


def skeleton_indices(keypoint_names: Sequence[str], skeleton: Iterable[Sequence[Any]]) -> list[tuple[int, int]]:
    """The skeleton as 0-based keypoint index pairs. `skeleton`: pairs of 0-based indices (as
    `KeypointSet.skeleton`) or of keypoint names. ValueError for an index out of range or an unknown name."""
    names = list(keypoint_names)
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for edge in skeleton:
        ends = list(edge)
        if len(ends) != 2:
            raise ValueError(f"skeleton edge {edge!r} is not a pair")
        resolved = []
        for end in ends:
            if isinstance(end, str):
                if end not in index:
                    raise ValueError(f"skeleton edge {edge!r}: no keypoint named {end!r}")
                resolved.append(index[end])
            elif isinstance(end, (int, np.integer)) and not isinstance(end, bool) and 0 <= end < len(names):
                resolved.append(int(end))
            else:
                raise ValueError(f"skeleton edge {edge!r}: {end!r} is not a keypoint index in 0..{len(names) - 1}")
        pairs.append((resolved[0], resolved[1]))
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# PoseTrack documents
# ----------------------------------------------------------------------------------------------------------------


def _rounded(values: np.ndarray, decimals: int) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return np.round(np.where(np.isfinite(values), values, 0.0), decimals)


def _dense_tracks(persons: PersonArrays, frame_index: np.ndarray) -> dict[int, int]:
    """Track id -> 0, 1, ... by first appearance (frame order, ties by id)."""
    first: dict[int, int] = {}
    for row, tid, ok in zip(persons.row.tolist(), persons.track_id.tolist(), persons.has_track.tolist()):
        if ok:
            frame = int(frame_index[row])
            first[tid] = min(first.get(tid, frame), frame)
    return {tid: n for n, tid in enumerate(sorted(first, key=lambda t: (first[t], t)))}


def _document(video: pa.Table, name: str, number: int, category: dict, num_keypoints: int,
              track_ids: str, next_annotation_id: int) -> tuple[dict, int]:
    frame_index = video.column("frame_index").to_numpy()
    if len(frame_index) and (frame_index.min() < 0 or frame_index.max() >= FRAME_ID_STRIDE):
        raise ValueError(f"video {name!r}: frame_index must be in 0..{FRAME_ID_STRIDE - 1}")
    timestamps = [t if t is not None and np.isfinite(t) else None for t in (
        video.column("timestamp_s").to_pylist() if "timestamp_s" in video.column_names else [None] * len(frame_index))]
    widths = video.column("width").to_pylist()
    heights = video.column("height").to_pylist()
    errors = video.column("error").to_pylist()
    image_ids = (number * FRAME_ID_STRIDE + frame_index.astype(np.int64)).tolist()
    images = []
    for i, frame in enumerate(frame_index.tolist()):
        image = {
            "id": image_ids[i], "frame_id": image_ids[i], "file_name": f"{name}/{frame:06d}.jpg", "vid_id": name,
            "nframes": len(frame_index), "is_labeled": errors[i] is None,
            "frame_index": frame, "timestamp_s": timestamps[i], "width": widths[i], "height": heights[i],
        }
        if errors[i] is not None:
            image["error"] = errors[i]
        images.append(image)

    persons = person_arrays_of(video, num_keypoints)
    dense = _dense_tracks(persons, frame_index) if track_ids == "dense" else None
    keypoints = persons.keypoints.astype(np.float64)
    keypoints[..., :2] = _rounded(keypoints[..., :2], COORD_DECIMALS)
    keypoints[..., 2] = _rounded(keypoints[..., 2], SCORE_DECIMALS)
    flat_keypoints = keypoints.reshape(len(keypoints), 3 * num_keypoints).tolist()
    keypoint_scores = keypoints[..., 2].tolist()
    boxes = _rounded(persons.bbox, COORD_DECIMALS).tolist()
    scores = _rounded(persons.score, SCORE_DECIMALS).tolist()
    box_scores = _rounded(persons.box_score, SCORE_DECIMALS).tolist()
    annotations = []
    seen: set[tuple[int, int]] = set()
    for p, (row, tid, ok) in enumerate(zip(persons.row.tolist(), persons.track_id.tolist(),
                                           persons.has_track.tolist())):
        if ok:
            if (row, tid) in seen:
                raise ValueError(f"video {name!r}, frame_index {int(frame_index[row])}: track_id {tid} is given to "
                                 "two persons")
            seen.add((row, tid))
        annotations.append({
            "id": next_annotation_id, "image_id": image_ids[row], "category_id": category["id"],
            "track_id": (dense[tid] if dense is not None else tid) if ok else None,
            "bbox": boxes[p], "keypoints": flat_keypoints[p], "scores": keypoint_scores[p],
            "score": scores[p], "box_score": box_scores[p],
        })
        next_annotation_id += 1
    return {"images": images, "annotations": annotations, "categories": [dict(category)]}, next_annotation_id


def posetrack_videos(
    rows: pa.Table,
    keypoint_names: Sequence[str],
    skeleton: Iterable[Sequence[Any]],
    *,
    track_ids: Literal["preserve", "dense"] = "preserve",
) -> dict[str, dict]:
    """One PoseTrack 2018 annotation document per video of `rows` (fields, ids and limits: the module docstring).

    rows: prediction rows (pyarrow Table) with at least video_uri, frame_index, width, height, error, persons
        (timestamp_s too when present); image rows (video_uri null) are ignored.
    keypoint_names: the K names, in the keypoints' order (the category's `keypoints`).
    skeleton: pairs of 0-based keypoint indices (`KeypointSet.skeleton`) or of names; written 1-based.
    track_ids: "preserve" writes the rows' track ids; "dense" renumbers each video's tracks 0, 1, ... in order of
        first appearance (poseval needs ids below 10000).

    Returns {video_uri: document}, in video_uri order. Raises ValueError for a missing column, a video row without
    frame_index, a frame_index repeated in a video or outside 0..10**8-1, a person whose keypoints are not 3K
    values, or two persons of one frame with the same track id.
    """
    if track_ids not in ("preserve", "dense"):
        raise ValueError(f"track_ids must be 'preserve' or 'dense', got {track_ids!r}")
    names_list = [str(n) for n in keypoint_names]
    edges = skeleton_indices(names_list, skeleton)
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": names_list,
                "skeleton": [[a + 1, b + 1] for a, b in edges]}
    videos = rows_by_video(rows)
    names = video_names(videos)
    documents: dict[str, dict] = {}
    next_annotation_id = 1
    for number, (uri, video) in enumerate(videos.items(), start=1):
        documents[uri], next_annotation_id = _document(
            video, names[uri], number, category, len(names_list), track_ids, next_annotation_id)
    return documents


def write_posetrack(
    rows: pa.Table,
    folder: str,
    keypoint_names: Sequence[str],
    skeleton: Iterable[Sequence[Any]],
    *,
    track_ids: Literal["preserve", "dense"] = "preserve",
) -> list[str]:
    """Write `posetrack_videos(rows, ...)` as `<folder>/<video name>.json`, one file per video (`video_names`: the
    video's file stem, with a hash suffix for stems several videos share, so no file overwrites another).

    folder: a local path or fsspec URL, created if missing; each file is written whole or not at all. Returns the
    written paths in video_uri order (none for a table without video rows). Raises as `posetrack_videos`; OSError
    from the file system."""
    documents = posetrack_videos(rows, keypoint_names, skeleton, track_ids=track_ids)
    names = video_names(documents)
    written = []
    for uri, document in documents.items():
        path = f"{folder.rstrip('/')}/{names[uri]}.json"
        data = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        write_atomically(path, lambda handle, data=data: handle.write(data))
        written.append(path)
    return written
