"""The prediction rows every stage writes and reads: one row per input image, whatever happened to it.

| column     | type                 | meaning                                                                    |
| image_uri  | string               | where the image was read (shard members: `shard_uri#key`)                  |
| image_id   | int64, nullable      | COCO image id when a COCO file named the image                             |
| width      | int32                | image width after EXIF orientation (0 when it could not be decoded)       |
| height     | int32                | image height after EXIF orientation                                        |
| persons    | list<struct>         | bbox (4 float32, COCO xywh), box_score, score (float32), keypoints (3K     |
|            |                      | float32: x, y, score per keypoint, dataset order), track_id (int64: the    |
|            |                      | person's track within its video; null for images)                          |
| error      | string, nullable     | why the image could not be processed; null when it was                     |
| error_retryable | bool, nullable  | the failure may pass (a read that failed, a pose-stage failure): a re-run   |
|            |                      | redoes it; false for undecodable bytes or unusable boxes; null: no error   |
| video_uri  | string, nullable     | the video a frame row comes from (`image_uri` is `video_uri#frame=N`)       |
| frame_index| int64, nullable      | the frame's index in the video's presentation order, from 0                |
| timestamp_s| float64, nullable    | the frame's presentation time in seconds from the stream's start (variable |
|            |                      | frame rates right: read from the stream, not index / fps)                  |

The three video columns are null for images. `track_id` is `birth frame_index * 1000 + n` (vitpose_batch.video.tracking):
unique within its video and the same on every run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

PERSON_TYPE = pa.struct([
    ("bbox", pa.list_(pa.float32(), 4)),
    ("box_score", pa.float32()),
    ("score", pa.float32()),
    ("keypoints", pa.list_(pa.float32())),
    ("track_id", pa.int64()),
])

# the columns only video frames fill (null for images); estimate_poses does not add them
FRAME_FIELDS = (
    pa.field("video_uri", pa.string()),
    pa.field("frame_index", pa.int64()),
    pa.field("timestamp_s", pa.float64()),
)
FRAME_COLUMNS = tuple(f.name for f in FRAME_FIELDS)

PREDICTION_SCHEMA = pa.schema([
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("image_id", pa.int64()),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("persons", pa.list_(PERSON_TYPE), nullable=False),
    pa.field("error", pa.string()),
    pa.field("error_retryable", pa.bool_()),
    *FRAME_FIELDS,
])


def keypoints_with_scores(result: dict[str, np.ndarray]) -> np.ndarray:
    """A PoseEstimator per-image result's poses as rows store them: [N, K, 3] (x, y image pixels; score)."""
    return np.concatenate([result["keypoints"], result["keypoint_scores"][..., None]], axis=-1)


def persons_from_result(result: dict[str, np.ndarray]) -> list[dict]:
    """A PoseEstimator per-image result -> the `persons` list of one row."""
    keypoints = keypoints_with_scores(result).astype(np.float32)
    return [
        {
            "bbox": result["boxes"][i].astype(np.float32).tolist(),
            "box_score": float(result["box_scores"][i]),
            "score": float(result["scores"][i]),
            "keypoints": keypoints[i].reshape(-1).tolist(),
            "track_id": None if "track_ids" not in result else int(result["track_ids"][i]),
        }
        for i in range(len(result["boxes"]))
    ]


def persons_column(results: Sequence[dict[str, np.ndarray] | None]) -> pa.Array:
    """PoseEstimator per-image results (None: no persons) -> the `persons` column, built from the arrays in one go
    (no Python object per person: at thousands of crops per second the per-person dicts cost more than the model).
    A result's optional `track_ids` (int64 [N]) fill `track_id`; without them it is null (images)."""
    counts = [0 if r is None else len(r["boxes"]) for r in results]
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    present = [r for r in results if r is not None and len(r["boxes"])]
    if not present:
        empty = pa.array([], PERSON_TYPE)
        return pa.ListArray.from_arrays(offsets, empty, type=pa.list_(PERSON_TYPE))
    boxes = np.concatenate([r["boxes"] for r in present]).astype(np.float32).reshape(-1)
    keypoints = np.concatenate([keypoints_with_scores(r).reshape(len(r["boxes"]), -1)
                                for r in present]).astype(np.float32)
    total, width = keypoints.shape
    struct = pa.StructArray.from_arrays(
        [pa.FixedSizeListArray.from_arrays(pa.array(boxes), 4),
         pa.array(np.concatenate([r["box_scores"] for r in present]).astype(np.float32)),
         pa.array(np.concatenate([r["scores"] for r in present]).astype(np.float32)),
         pa.ListArray.from_arrays(pa.array(np.arange(0, total * width + 1, width, dtype=np.int32)),
                                  pa.array(keypoints.reshape(-1))),
         _track_ids(present)],
        fields=list(PERSON_TYPE))
    return pa.ListArray.from_arrays(offsets, struct, type=pa.list_(PERSON_TYPE))


def _track_ids(present: Sequence[dict[str, np.ndarray]]) -> pa.Array:
    if not any("track_ids" in r for r in present):
        return pa.nulls(sum(len(r["boxes"]) for r in present), pa.int64())
    return pa.array(np.concatenate([np.asarray(r["track_ids"], np.int64) if "track_ids" in r
                                    else np.full(len(r["boxes"]), -1, np.int64) for r in present]),
                    mask=np.concatenate([np.zeros(len(r["boxes"]), bool) if "track_ids" in r
                                         else np.ones(len(r["boxes"]), bool) for r in present]))


def make_table(
    image_uri: Sequence[str],
    image_id: Sequence[int | None],
    width: Sequence[int],
    height: Sequence[int],
    persons: Sequence[list[dict]] | pa.Array,
    error: Sequence[str | None],
    error_retryable: Sequence[bool | None] | None = None,
    video_uri: Sequence[str | None] | None = None,
    frame_index: Sequence[int | None] | None = None,
    timestamp_s: Sequence[float | None] | None = None,
) -> pa.Table:
    """Columns -> a table of PREDICTION_SCHEMA (types checked by Arrow). `error_retryable` defaults to False for
    every error (permanent); the video columns default to null (images)."""
    if error_retryable is None:
        error_retryable = [None if e is None else False for e in error]
    n = len(image_uri)
    frame = {name: [None] * n if values is None else list(values)
             for name, values in zip(FRAME_COLUMNS, (video_uri, frame_index, timestamp_s))}
    if isinstance(persons, pa.Array) or not persons:
        persons_value = persons
    else:
        persons_value = [[{"track_id": None, **p} for p in row] for row in persons]
    return pa.Table.from_pydict(
        {"image_uri": list(image_uri), "image_id": list(image_id), "width": list(width), "height": list(height),
         "persons": persons_value if isinstance(persons_value, pa.Array) else list(persons_value),
         "error": list(error), "error_retryable": list(error_retryable), **frame},
        schema=PREDICTION_SCHEMA,
    )


def person_arrays(persons: list[dict]) -> dict[str, np.ndarray]:
    """The `persons` of one row back as arrays: boxes (n,4), box_scores (n,), scores (n,), keypoints (n,K,3), and
    track_ids (n,) int64 when the row is a video frame's (absent for images)."""
    if not persons:
        return {"boxes": np.zeros((0, 4), np.float32), "box_scores": np.zeros(0, np.float32),
                "scores": np.zeros(0, np.float32), "keypoints": np.zeros((0, 0, 3), np.float32)}
    tracks = {} if persons[0].get("track_id") is None else {
        "track_ids": np.array([p["track_id"] for p in persons], np.int64)}
    return {**tracks,
        "boxes": np.array([p["bbox"] for p in persons], np.float32).reshape(-1, 4),
        "box_scores": np.array([p["box_score"] for p in persons], np.float32),
        "scores": np.array([p["score"] for p in persons], np.float32),
        "keypoints": np.array([p["keypoints"] for p in persons], np.float32).reshape(len(persons), -1, 3),
    }

