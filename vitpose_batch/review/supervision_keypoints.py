"""Rows and PoseEstimator results as `supervision.KeyPoints`, for people who draw with supervision (as the seed page
does): `sv.VertexAnnotator().annotate(image, to_sv_keypoints(row))`.

supervision is an optional extra (`pip install vitpose-batch[supervision]`); it is imported only here.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from vitpose_batch.schemas.predictions import person_arrays


def to_sv_keypoints(prediction: Mapping[str, Any]):
    """One image's persons -> `supervision.KeyPoints`.

    prediction: an output row (a dict with `persons`, as `read_output(...).take()` or a part file gives) or a
    `vitpose_core.PoseEstimator` result (a dict with `keypoints` (n, K, 2) and `keypoint_scores` (n, K)).
    Returns KeyPoints with xy (n, K, 2) float32 image pixels, confidence (n, K) float32 0-1 heatmap scores, class_id
    (n,) zeros (person), and data: `bbox` (n, 4) COCO xywh, `box_score` (n,), `score` (n,) person scores, and
    `track_id` (n,) int64 for a video frame's persons.
    Raises ImportError naming the extra when supervision is not installed; ValueError for another kind of dict."""
    try:
        import supervision as sv
    except ImportError as exc:
        raise ImportError(f"to_sv_keypoints needs supervision: pip install 'vitpose-batch[supervision]' ({exc})") \
            from None
    if "persons" in prediction:
        arrays = person_arrays(prediction["persons"] or [])
        xy, confidence = arrays["keypoints"][..., :2], arrays["keypoints"][..., 2]
        boxes, box_scores, scores = arrays["boxes"], arrays["box_scores"], arrays["scores"]
        track_ids = arrays.get("track_ids")
    elif "keypoints" in prediction and "keypoint_scores" in prediction:
        xy, confidence = np.asarray(prediction["keypoints"]), np.asarray(prediction["keypoint_scores"])
        n = len(xy)
        boxes = np.asarray(prediction.get("boxes", np.zeros((n, 4))), np.float32).reshape(-1, 4)
        box_scores = np.asarray(prediction.get("box_scores", np.ones(n)), np.float32).reshape(-1)
        scores = np.asarray(prediction.get("scores", np.ones(n)), np.float32).reshape(-1)
        track_ids = prediction.get("track_ids")
    else:
        raise ValueError("to_sv_keypoints takes an output row (with 'persons') or a PoseEstimator result (with "
                         f"'keypoints' and 'keypoint_scores'); got keys {sorted(prediction)}")
    n = len(xy)
    keypoints = np.asarray(xy, np.float32).reshape(n, -1, 2) if n else np.zeros((0, 0, 2), np.float32)
    scores_of_keypoints = np.asarray(confidence, np.float32).reshape(n, keypoints.shape[1])
    # supervision 0.29 renamed `confidence` to `keypoint_confidence` (the old name warns, and goes in 0.32)
    named = ("keypoint_confidence" if "keypoint_confidence" in inspect.signature(sv.KeyPoints).parameters
             else "confidence")
    data = {"bbox": boxes, "box_score": box_scores, "score": scores}
    if track_ids is not None:
        data["track_id"] = track_ids
    return sv.KeyPoints(xy=keypoints, class_id=np.zeros(n, int), data=data, **{named: scores_of_keypoints})
