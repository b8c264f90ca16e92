"""The prediction rows every stage writes and reads: one row per input image, whatever happened to it.

| column     | type                 | meaning                                                                    |
| image_uri  | string               | where the image was read (shard members: `shard_uri#key`)                  |
| image_id   | int64, nullable      | COCO image id when a COCO file named the image                             |
| width      | int32                | image width after EXIF orientation (0 when it could not be decoded)       |
| height     | int32                | image height after EXIF orientation                                        |
| persons    | list<struct>         | bbox (4 float32, COCO xywh), box_score, score (float32), keypoints (3K     |
|            |                      | float32: x, y, score per keypoint, dataset order)                          |
| error      | string, nullable     | why the image could not be processed; null when it was                     |
| error_retryable | bool, nullable  | the failure may pass (a read that failed, a pose-stage failure): a re-run   |
|            |                      | redoes it; false for undecodable bytes or unusable boxes; null: no error   |
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
])

PREDICTION_SCHEMA = pa.schema([
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("image_id", pa.int64()),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("persons", pa.list_(PERSON_TYPE), nullable=False),
    pa.field("error", pa.string()),
    pa.field("error_retryable", pa.bool_()),
])


def persons_from_result(result: dict[str, np.ndarray]) -> list[dict]:
    """A PoseEstimator per-image result -> the `persons` list of one row."""
    keypoints = np.concatenate(
        [result["keypoints"], result["keypoint_scores"][..., None]], axis=-1
    ).astype(np.float32)
    return [
        {
            "bbox": result["boxes"][i].astype(np.float32).tolist(),
            "box_score": float(result["box_scores"][i]),
            "score": float(result["scores"][i]),
            "keypoints": keypoints[i].reshape(-1).tolist(),
        }
        for i in range(len(result["boxes"]))
    ]


def persons_column(results: Sequence[dict[str, np.ndarray] | None]) -> pa.Array:
    """PoseEstimator per-image results (None: no persons) -> the `persons` column, built from the arrays in one go
    (no Python object per person: at thousands of crops per second the per-person dicts cost more than the model)."""
    counts = [0 if r is None else len(r["boxes"]) for r in results]
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    present = [r for r in results if r is not None and len(r["boxes"])]
    if not present:
        empty = pa.array([], PERSON_TYPE)
        return pa.ListArray.from_arrays(offsets, empty, type=pa.list_(PERSON_TYPE))
    boxes = np.concatenate([r["boxes"] for r in present]).astype(np.float32).reshape(-1)
    keypoints = np.concatenate([np.concatenate([r["keypoints"], r["keypoint_scores"][..., None]], axis=-1)
                                .reshape(len(r["boxes"]), -1) for r in present]).astype(np.float32)
    total, width = keypoints.shape
    struct = pa.StructArray.from_arrays(
        [pa.FixedSizeListArray.from_arrays(pa.array(boxes), 4),
         pa.array(np.concatenate([r["box_scores"] for r in present]).astype(np.float32)),
         pa.array(np.concatenate([r["scores"] for r in present]).astype(np.float32)),
         pa.ListArray.from_arrays(pa.array(np.arange(0, total * width + 1, width, dtype=np.int32)),
                                  pa.array(keypoints.reshape(-1)))],
        fields=list(PERSON_TYPE))
    return pa.ListArray.from_arrays(offsets, struct, type=pa.list_(PERSON_TYPE))


def make_table(
    image_uri: Sequence[str],
    image_id: Sequence[int | None],
    width: Sequence[int],
    height: Sequence[int],
    persons: Sequence[list[dict]] | pa.Array,
    error: Sequence[str | None],
    error_retryable: Sequence[bool | None] | None = None,
) -> pa.Table:
    """Columns -> a table of PREDICTION_SCHEMA (types checked by Arrow). `error_retryable` defaults to False for
    every error (permanent)."""
    if error_retryable is None:
        error_retryable = [None if e is None else False for e in error]
    return pa.Table.from_pydict(
        {"image_uri": list(image_uri), "image_id": list(image_id), "width": list(width), "height": list(height),
         "persons": persons if isinstance(persons, pa.Array) else list(persons), "error": list(error),
         "error_retryable": list(error_retryable)},
        schema=PREDICTION_SCHEMA,
    )


def person_arrays(persons: list[dict]) -> dict[str, np.ndarray]:
    """The `persons` of one row back as arrays: boxes (n,4), box_scores (n,), scores (n,), keypoints (n,K,3)."""
    if not persons:
        return {"boxes": np.zeros((0, 4), np.float32), "box_scores": np.zeros(0, np.float32),
                "scores": np.zeros(0, np.float32), "keypoints": np.zeros((0, 0, 3), np.float32)}
    return {
        "boxes": np.array([p["bbox"] for p in persons], np.float32).reshape(-1, 4),
        "box_scores": np.array([p["box_score"] for p in persons], np.float32),
        "scores": np.array([p["score"] for p in persons], np.float32),
        "keypoints": np.array([p["keypoints"] for p in persons], np.float32).reshape(len(persons), -1, 3),
    }

