"""The persons column built from arrays equals the one built person by person."""

from __future__ import annotations

import numpy as np

from vitpose_batch.schemas.predictions import PREDICTION_SCHEMA, make_table, persons_column, persons_from_result


def result(rng, n: int, k: int = 17) -> dict:
    return {"boxes": rng.random((n, 4), np.float32) * 100, "box_scores": rng.random(n, np.float32),
            "scores": rng.random(n, np.float32), "keypoints": rng.random((n, k, 2), np.float32) * 100,
            "keypoint_scores": rng.random((n, k), np.float32)}


def test_persons_column_equals_persons_built_one_by_one():
    rng = np.random.default_rng(0)
    for results in ([result(rng, 2), None, result(rng, 0), result(rng, 3)], [None, None], [result(rng, 1, k=133)]):
        n = len(results)
        columnar = make_table([f"/{i}.jpg" for i in range(n)], [None] * n, [1] * n, [1] * n, persons_column(results),
                              [None] * n)
        by_person = make_table([f"/{i}.jpg" for i in range(n)], [None] * n, [1] * n, [1] * n,
                               [persons_from_result(r) if r is not None else [] for r in results], [None] * n)
        assert columnar.schema == PREDICTION_SCHEMA
        assert columnar.equals(by_person)
