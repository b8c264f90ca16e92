"""Rows and PoseEstimator results as supervision.KeyPoints, drawn with supervision's own annotators."""

from __future__ import annotations

import numpy as np

import vitpose_batch as vb
import vitpose_core as vc
from tests import coco_data
from tests.optional import require
from vitpose_batch.schemas.predictions import make_table, persons_column

sv = require("supervision")


def test_rows_and_results_become_the_same_keypoints(tiny_vitpose):
    photo = coco_data.load("coco-val-4")[2]  # several persons
    result = vc.PoseEstimator(vc.load_pose_model(tiny_vitpose))([photo.image], [photo.boxes])[0]
    row = make_table(["/a.jpg"], [None], [photo.image.shape[1]], [photo.image.shape[0]], persons_column([result]),
                     [None]).to_pylist()[0]
    from_result, from_row = vb.to_sv_keypoints(result), vb.to_sv_keypoints(row)
    for keypoints in (from_result, from_row):
        assert isinstance(keypoints, sv.KeyPoints) and len(keypoints) == len(photo.boxes) > 1
        np.testing.assert_allclose(keypoints.xy, result["keypoints"], atol=1e-3)
        scores = getattr(keypoints, "keypoint_confidence", None)
        np.testing.assert_allclose(keypoints.confidence if scores is None else scores, result["keypoint_scores"],
                                   atol=1e-6)
        np.testing.assert_allclose(keypoints.data["bbox"], photo.boxes, atol=1e-3)
    drawn = sv.VertexAnnotator(radius=4).annotate(photo.image.copy(), from_row)
    x, y = np.clip(np.round(result["keypoints"][0, 0]).astype(int), 0, np.array(photo.image.shape[1::-1]) - 1)
    assert (drawn != photo.image).any() and (drawn[y, x] != photo.image[y, x]).any()  # a vertex where it belongs
    assert len(vb.to_sv_keypoints({"persons": []})) == 0
