"""ViTPose's OKS-NMS: greedy non-maximum suppression of poses by object keypoint similarity, as mmpose 0.x does it.

Used by `evaluate` (ViTPose's protocol) and by the pseudo-label exports (no two poses of one person). Pure numpy.
"""

from __future__ import annotations

import numpy as np

from vitpose_batch.defaults import OKS_THRESHOLD
from vitpose_core.crops import boxes_to_center_scale



def oks(reference: np.ndarray, others: np.ndarray, reference_area: float, other_areas: np.ndarray,
        sigmas: np.ndarray) -> np.ndarray:
    """Object keypoint similarity of one pose (K, 3) with each of `others` (n, K, 3), areas as COCO defines OKS."""
    variances = (2 * sigmas) ** 2
    squared = ((others[..., :2] - reference[None, :, :2]) ** 2).sum(-1)  # (n, K)
    scale = (reference_area + other_areas)[:, None] / 2 + np.spacing(1)
    return np.exp(-squared / variances[None] / scale / 2).mean(axis=1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: np.ndarray,
            threshold: float = OKS_THRESHOLD) -> list[int]:
    """Greedy NMS by OKS: keep the best-scored pose, drop those with OKS above `threshold` to it, repeat."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        if rest.size == 0:
            break
        similarity = oks(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas)
        order = rest[similarity <= threshold]
    return keep


def padded_box_areas(boxes: np.ndarray) -> np.ndarray:
    """Area of each person's crop region (aspect-fixed, padded by 1.25): the area mmpose's OKS-NMS uses."""
    _, size = boxes_to_center_scale(boxes, aspect_ratio=192 / 256)
    return (size[:, 0] * size[:, 1]).astype(np.float64)
