"""Video prediction rows as mmaction2 skeleton annotations (PoseDataset: ST-GCN, ST-GCN++, PoseC3D, ...).

    annotations = mmaction_annotations(rows, num_keypoints=17)          # one dict per video
    write_mmaction(rows, "skeletons.pkl", num_keypoints=17)             # a pickle of that list

Format source: open-mmlab/mmaction2 `mmaction/datasets/pose_dataset.py` (`PoseDataset.load_data_list`: the
annotation file is a `.pkl` loaded with `mmengine.load`, a list of per-video dicts, or with a `split` the dict
`{"split": {name: [frame_dir, ...]}, "annotations": [...]}`) and `mmaction/datasets/transforms/pose_loading.py`
(`UniformSampleFrames` draws indices in `range(total_frames)`, `PoseDecode` takes `keypoint[:, frame_inds]` and
`keypoint_score[:, frame_inds]`), plus the layout of mmaction2's own skeleton pickles (ntu60_2d.pkl, gym_2d.pkl).
Each video's dict:

* `frame_dir` (str): the video's name, `vitpose_batch.review.posetrack.video_names` (its file stem, with a hash
  suffix for stems several videos share): unique within the list.
* `total_frames` (int) T: the number of the video's rows (sampled frames), error frames included.
* `img_shape`, `original_shape` (tuple (h, w)): the frame size as shown (after rotation), from the error-free rows.
* `keypoint` float32 [M, T, V, 2] (x, y pixels) and `keypoint_score` float32 [M, T, V]: person m is the m-th track
  in the order (frames it appears in, descending; then track id, ascending); frame t is the t-th sampled frame in
  `frame_index` order. A track absent from a frame, and every person of an error frame, is zeros there (so T stays
  the number of sampled frames, and `keypoint[:, t]` is always the frame with `frame_indices[t]`).
* `label` (int): only with `label_column`, the column's single non-null value among the video's rows.
* Extra keys, which mmaction2's pipelines pass through untouched: `video_uri`, `frame_indices` (int64 [T]),
  `timestamps_s` (float64 [T], NaN where unknown), `track_ids` (int64 [M]).

`start_index` and `modality` are added by mmaction2's dataset itself. Persons without a track id (tracking off) are
left out, with a warning: a skeleton sequence needs to know which person is which across frames.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from vitpose_batch.files.storage import write_atomically
from vitpose_batch.review.posetrack import person_arrays_of, rows_by_video, video_names

__all__ = ["check_pickle_path", "mmaction_annotations", "write_mmaction"]

logger = logging.getLogger(__name__)

PICKLE_PROTOCOL = 4  # readable by every Python mmaction2 supports


def _frame_shape(video: pa.Table, uri: str) -> tuple[int, int]:
    heights = np.asarray(video.column("height").to_numpy(zero_copy_only=False), np.int64)
    widths = np.asarray(video.column("width").to_numpy(zero_copy_only=False), np.int64)
    ok = np.asarray(video.column("error").is_null().to_numpy(zero_copy_only=False), bool) & (heights > 0) & (widths > 0)
    if not ok.any():
        ok = (heights > 0) & (widths > 0)
    shapes = sorted({(int(h), int(w)) for h, w in zip(heights[ok], widths[ok])})
    if len(shapes) > 1:
        raise ValueError(f"video {uri!r}: frames of several sizes {shapes} (h, w); one img_shape cannot describe them")
    return shapes[0] if shapes else (0, 0)


def _label(video: pa.Table, uri: str, column: str) -> int:
    values = {v for v in video.column(column).to_pylist() if v is not None}
    if len(values) != 1:
        raise ValueError(f"video {uri!r}: label column {column!r} has {len(values)} distinct non-null values "
                         f"({sorted(map(repr, values))[:5]}), expected exactly one")
    value = values.pop()
    if isinstance(value, bool) or not (isinstance(value, (int, np.integer))
                                       or (isinstance(value, float) and value.is_integer())):
        raise ValueError(f"video {uri!r}: label {value!r} in column {column!r} is not an integer class index")
    return int(value)


def _annotation(video: pa.Table, uri: str, name: str, num_keypoints: int, max_persons: int | None,
                label_column: str | None) -> dict[str, Any]:
    total = video.num_rows
    frame_indices = np.asarray(video.column("frame_index").to_numpy(), np.int64)
    if "timestamp_s" in video.column_names:
        timestamps = np.asarray(video.column("timestamp_s").to_numpy(zero_copy_only=False), np.float64)
    else:
        timestamps = np.full(total, np.nan)
    persons = person_arrays_of(video, num_keypoints)
    untracked = int((~persons.has_track).sum())
    if untracked:
        logger.warning("mmaction: video %s: %d person(s) without a track id left out", uri, untracked)
    row, tid = persons.row[persons.has_track], persons.track_id[persons.has_track]
    keypoints = persons.keypoints[persons.has_track]
    pairs = np.stack([row, tid], axis=1) if len(row) else np.zeros((0, 2), np.int64)
    unique_pairs, counts = np.unique(pairs, axis=0, return_counts=True)
    if (counts > 1).any():
        r, t = unique_pairs[np.argmax(counts > 1)]
        raise ValueError(f"video {uri!r}, frame_index {int(frame_indices[r])}: track_id {int(t)} is given to two persons")
    tracks, frames_per_track = np.unique(tid, return_counts=True)
    order = np.lexsort((tracks, -frames_per_track))  # frames appeared in, descending; then id, ascending
    tracks = tracks[order]
    if max_persons is not None:
        tracks = tracks[:max_persons]
    slot = {int(t): m for m, t in enumerate(tracks.tolist())}
    keypoint = np.zeros((len(tracks), total, num_keypoints, 2), np.float32)
    keypoint_score = np.zeros((len(tracks), total, num_keypoints), np.float32)
    if len(tid):
        m = np.array([slot.get(int(t), -1) for t in tid.tolist()], np.int64)
        kept = m >= 0
        keypoint[m[kept], row[kept]] = keypoints[kept, :, :2]
        keypoint_score[m[kept], row[kept]] = keypoints[kept, :, 2]
    # a NaN would poison every later normalisation; the format's "nothing here" is 0
    np.nan_to_num(keypoint, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.nan_to_num(keypoint_score, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    shape = _frame_shape(video, uri)
    annotation: dict[str, Any] = {
        "frame_dir": name,
        "total_frames": int(total),
        "img_shape": shape,
        "original_shape": shape,
        "keypoint": keypoint,
        "keypoint_score": keypoint_score,
    }
    if label_column is not None:
        annotation["label"] = _label(video, uri, label_column)
    annotation.update({"video_uri": uri, "frame_indices": frame_indices, "timestamps_s": timestamps,
                       "track_ids": tracks.astype(np.int64)})
    return annotation


def mmaction_annotations(
    rows: pa.Table,
    num_keypoints: int,
    *,
    label_column: str | None = None,
    max_persons: int | None = None,
) -> list[dict]:
    """One mmaction2 PoseDataset annotation dict per video of `rows` (keys, shapes and order: the module docstring).

    rows: prediction rows (pyarrow Table) with video_uri, frame_index, width, height, error, persons (timestamp_s
        and `label_column` when used); image rows (video_uri null) are ignored.
    num_keypoints: V, the keypoints per person (every person must have 3V keypoint values).
    label_column: a column holding the video's integer class index (one non-null value per video) -> `label`.
    max_persons: keep only the M longest tracks (the first M in the person order); None keeps every track.

    Returns the dicts in video_uri order. Shapes: keypoint float32 [M, T, V, 2], keypoint_score float32 [M, T, V],
    T = the video's sampled frames (error frames are kept as all-zero frames), M = its tracks (0 when none).
    Raises ValueError for a missing column, a repeated frame_index, a person with other than 3V keypoint values,
    two persons of one frame with one track id, frames of different sizes in one video, or a label column without
    exactly one integer value per video.
    """
    if isinstance(num_keypoints, bool) or not isinstance(num_keypoints, (int, np.integer)) or num_keypoints < 1:
        raise ValueError(f"num_keypoints must be a positive int, got {num_keypoints!r}")
    if max_persons is not None and (isinstance(max_persons, bool) or not isinstance(max_persons, (int, np.integer))
                                    or max_persons < 1):
        raise ValueError(f"max_persons must be a positive int or None, got {max_persons!r}")
    columns = ["video_uri", "frame_index", "width", "height", "error", "persons"]
    if label_column is not None:
        columns.append(label_column)
    videos = rows_by_video(rows, columns)
    names = video_names(videos)
    return [_annotation(video, uri, names[uri], int(num_keypoints), max_persons, label_column)
            for uri, video in videos.items()]


def check_pickle_path(path: str) -> None:
    """ValueError unless `path` ends in `.pkl`: mmaction2's PoseDataset reads only those."""
    if not path.endswith(".pkl"):
        raise ValueError(f"mmaction2's PoseDataset reads only .pkl annotation files, got {path!r}")


def write_mmaction(
    rows: pa.Table,
    path: str,
    num_keypoints: int,
    *,
    label_column: str | None = None,
    max_persons: int | None = None,
    split: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Pickle `mmaction_annotations(rows, ...)` to `path` (a local path or fsspec URL ending in `.pkl`, which
    PoseDataset requires), loadable with `pickle.load` / `mmengine.load`.

    split: None writes the list itself (PoseDataset with `split=None`); {split name: [frame_dir, ...]} writes
        `{"split": ..., "annotations": [...]}` (PoseDataset with `split="<name>"`); every frame_dir named must be a
        video of `rows`. Returns `path`. Raises ValueError for a path without `.pkl`, a split naming an unknown
        frame_dir, and as `mmaction_annotations`; TypeError for a split given as a string; OSError from the file system."""
    check_pickle_path(path)
    annotations = mmaction_annotations(rows, num_keypoints, label_column=label_column, max_persons=max_persons)
    payload: Any = annotations
    if split is not None:
        known = {a["frame_dir"] for a in annotations}
        payload_split = {}
        for split_name, frame_dirs in split.items():
            if isinstance(frame_dirs, str):
                raise TypeError(f"split {split_name!r} must be a list of frame_dir names, got a string")
            unknown = sorted(set(frame_dirs) - known)
            if unknown:
                raise ValueError(f"split {split_name!r} names frame_dir(s) not among the videos: {unknown[:5]}")
            payload_split[str(split_name)] = list(frame_dirs)
        payload = {"split": payload_split, "annotations": annotations}
    data = pickle.dumps(payload, protocol=PICKLE_PROTOCOL)
    write_atomically(path, lambda handle: handle.write(data))
    return path
