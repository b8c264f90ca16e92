"""Draw pose estimation results (skeleton edges, keypoint dots, person boxes) onto an RGB image.

    from vitpose_core.drawing import draw_poses, draw_poses_from_result
    canvas = draw_poses(image, keypoints, keypoint_scores, boxes)   # image: HxWx3 uint8 RGB, never modified
    canvas = draw_poses_from_result(image, estimator([image])[0])   # one per-image PoseEstimator result dict

Coordinates are image pixels with pixel centres at integer positions (the convention of the UDP decoding in
`decoding.py` and of OpenCV), so a keypoint at (10.0, 20.0) lands on pixel row 20, column 10. Drawing is
sub-pixel accurate (OpenCV fixed-point `shift`) and anti-aliased.

Layering: all skeleton edges first, then all keypoint dots (so dots are never hidden by lines), then boxes.
A keypoint is drawn when its score is strictly above `score_threshold`; an edge when both its ends are. Keypoints
with NaN/inf coordinates or scores are skipped; keypoints outside the image are clipped by geometry (the visible
part of an edge is still drawn), never raise.

Colours are taken from the `KeypointSet` (RGB tuples) and written as-is, since the image is RGB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from .keypoint_sets import SETS_BY_COUNT, KeypointSet, get_keypoint_set, keypoint_set_for_count

__all__ = ["DEFAULT_BOX_COLOR", "default_radius", "default_thickness", "draw_poses", "draw_poses_from_result"]

RGB = tuple[int, int, int]

DEFAULT_BOX_COLOR: RGB = (255, 0, 0)

# The keypoint set is chosen from K when none is given (keypoint_sets.SETS_BY_COUNT). AP-10K / APT-36K (17 animal
# keypoints) share K with COCO, so an animal model's output needs keypoint_set="ap10k" explicitly.
# OpenCV fixed-point precision: coordinates are passed as round(v * 2**_SHIFT) with shift=_SHIFT.
_SHIFT = 4
_SCALE = 1 << _SHIFT


def default_radius(height: int, width: int) -> int:
    """Keypoint dot radius used when none is given: grows with the image, at least 2 pixels."""
    return max(2, round(min(height, width) / 150))


def default_thickness(height: int, width: int) -> int:
    """Edge / box line thickness used when none is given: grows with the image, at least 2 pixels."""
    return max(2, round(min(height, width) / 250))


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an HxWx3 RGB array, got shape {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {tuple(image.shape)}")
    return image


def _as_float_array(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor on any device, without importing torch here
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a numeric array: {exc}") from None


def _check_keypoints(keypoints: Any, keypoint_scores: Any) -> tuple[np.ndarray, np.ndarray | None]:
    kpts = _as_float_array(keypoints, "keypoints")
    if kpts.size == 0 and kpts.ndim < 3:  # e.g. np.zeros((0,)): no persons
        kpts = np.zeros((0, 0, 2))
    if kpts.ndim != 3 or kpts.shape[2] not in (2, 3):
        raise ValueError(f"keypoints must have shape (n, K, 2) or (n, K, 3), got {tuple(kpts.shape)}")
    scores = None
    if keypoint_scores is not None:
        scores = _as_float_array(keypoint_scores, "keypoint_scores")
        if scores.size == 0 and kpts.shape[0] == 0:
            scores = np.zeros(kpts.shape[:2])
        if scores.shape != kpts.shape[:2]:
            raise ValueError(
                f"keypoint_scores must have shape (n, K) = {kpts.shape[:2]} to match keypoints, got {scores.shape}"
            )
    elif kpts.shape[2] == 3:
        scores = kpts[:, :, 2]
    return kpts[:, :, :2], scores


def _check_boxes(boxes: Any, n: int) -> np.ndarray | None:
    if boxes is None:
        return None
    arr = _as_float_array(boxes, "boxes")
    if arr.size == 0 and n == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4) in COCO xywh, got {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{arr.shape[0]} boxes but keypoints for {n} persons: one box per person is needed")
    return arr


def _resolve_keypoint_set(keypoint_set: Any, num_keypoints: int) -> KeypointSet:
    if isinstance(keypoint_set, KeypointSet):
        kset = keypoint_set
    elif keypoint_set is None:
        if num_keypoints not in SETS_BY_COUNT:
            known = ", ".join(f"{k} ({ks.name})" for k, ks in sorted(SETS_BY_COUNT.items()))
            raise ValueError(
                f"no keypoint set known for K={num_keypoints} keypoints (known: {known}); pass keypoint_set=..."
            )
        kset = keypoint_set_for_count(num_keypoints)
    else:
        kset = get_keypoint_set(keypoint_set)
    if kset.num_keypoints != num_keypoints:
        raise ValueError(
            f"keypoints have K={num_keypoints} per person but keypoint set {kset.name!r} has {kset.num_keypoints}"
        )
    return kset


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _check_color(color: Any) -> RGB:
    try:
        rgb = tuple(int(c) for c in color)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"box_color must be an (r, g, b) tuple of ints in 0..255, got {color!r}")
    return rgb  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------------------------------


def _fixed(v: float) -> int:
    return int(round(v * _SCALE))


def _clip_segment(
    x1: float, y1: float, x2: float, y2: float, lo_x: float, lo_y: float, hi_x: float, hi_y: float
) -> tuple[float, float, float, float] | None:
    """Liang-Barsky: the part of a segment inside [lo_x, hi_x] x [lo_y, hi_y], or None if it misses the box.

    Done in float so far-away (but finite) endpoints never overflow OpenCV's int32 coordinates.
    """
    dx, dy = x2 - x1, y2 - y1
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x1 - lo_x), (dx, hi_x - x1), (-dy, y1 - lo_y), (dy, hi_y - y1)):
        if p == 0.0:
            if q < 0.0:
                return None
        else:
            t = q / p
            if p < 0.0:
                if t > t1:
                    return None
                t0 = max(t0, t)
            else:
                if t < t0:
                    return None
                t1 = min(t1, t)
    return x1 + t0 * dx, y1 + t0 * dy, x1 + t1 * dx, y1 + t1 * dy


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def draw_poses(
    image: np.ndarray,
    keypoints: np.ndarray,
    keypoint_scores: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    keypoint_set: KeypointSet | str | int | None = None,
    score_threshold: float = 0.3,
    radius: int | None = None,
    thickness: int | None = None,
    draw_boxes: bool = True,
    box_color: tuple[int, int, int] = DEFAULT_BOX_COLOR,
) -> np.ndarray:
    """Return a copy of `image` with the poses of n persons drawn on it (`image` itself is never modified).

    image: HxWx3 uint8 RGB.
    keypoints: (n, K, 2) image-pixel (x, y), or (n, K, 3) with the score as third column.
    keypoint_scores: (n, K); overrides a third keypoint column; None with (n, K, 2) keypoints draws every keypoint.
    boxes: (n, 4) COCO xywh person boxes, drawn (after the poses) when given and `draw_boxes` is true.
    keypoint_set: a KeypointSet, a name / ViTPose++ dataset index for `get_keypoint_set`, or None to choose by K
        (17 -> coco, 133 -> coco_wholebody, 16 -> mpii, 14 -> aic).
    score_threshold: keypoints with score > threshold are drawn; an edge when both its ends are.
    radius / thickness: dot radius and line thickness in pixels; None scales them with the image size.
    box_color: RGB colour of the boxes.
    """
    image = _check_image(image)
    kpts, scores = _check_keypoints(keypoints, keypoint_scores)
    n, k = kpts.shape[:2]
    box_array = _check_boxes(boxes, n)
    try:
        threshold = float(score_threshold)
    except (TypeError, ValueError):
        raise ValueError(f"score_threshold must be a number, got {score_threshold!r}") from None
    if math.isnan(threshold):
        raise ValueError("score_threshold must not be NaN")
    height, width = image.shape[:2]
    radius = default_radius(height, width) if radius is None else _check_positive_int(radius, "radius")
    thickness = default_thickness(height, width) if thickness is None else _check_positive_int(thickness, "thickness")
    color_box = _check_color(box_color)
    # Resolve (and so validate) the set even for n = 0 when one is named; with None an empty result of any K is fine.
    kset = _resolve_keypoint_set(keypoint_set, k) if (n > 0 or keypoint_set is not None) else None

    canvas = np.array(image, dtype=np.uint8, order="C", copy=True)
    if n == 0 or kset is None:
        return canvas

    finite = np.isfinite(kpts).all(axis=2)
    if scores is None:
        visible = finite
    else:
        with np.errstate(invalid="ignore"):
            visible = finite & (scores > threshold)  # NaN scores compare False: not drawn

    # Anything drawn beyond this margin is invisible; clipping to it keeps coordinates small for OpenCV.
    pad = float(max(radius, thickness) + 2)
    lo_x, lo_y, hi_x, hi_y = -pad, -pad, width - 1 + pad, height - 1 + pad

    # 1) skeleton edges
    for person in range(n):
        pts, vis = kpts[person], visible[person]
        for (a, b), color in zip(kset.skeleton, kset.edge_colors):
            if not (vis[a] and vis[b]):
                continue
            seg = _clip_segment(pts[a, 0], pts[a, 1], pts[b, 0], pts[b, 1], lo_x, lo_y, hi_x, hi_y)
            if seg is None:
                continue
            x1, y1, x2, y2 = seg
            cv2.line(
                canvas, (_fixed(x1), _fixed(y1)), (_fixed(x2), _fixed(y2)),
                tuple(int(c) for c in color), thickness, cv2.LINE_AA, _SHIFT,
            )

    # 2) keypoint dots
    for person in range(n):
        pts, vis = kpts[person], visible[person]
        for idx in np.flatnonzero(vis):
            x, y = pts[idx]
            if not (lo_x - radius <= x <= hi_x + radius and lo_y - radius <= y <= hi_y + radius):
                continue
            color = tuple(int(c) for c in kset.keypoint_colors[idx])
            cv2.circle(canvas, (_fixed(x), _fixed(y)), radius * _SCALE, color, -1, cv2.LINE_AA, _SHIFT)

    # 3) boxes
    if draw_boxes and box_array is not None:
        for x, y, w, h in box_array:
            if not np.isfinite((x, y, w, h)).all():
                continue
            x1, x2 = sorted((x, x + w))
            y1, y2 = sorted((y, y + h))
            if x2 < lo_x or x1 > hi_x or y2 < lo_y or y1 > hi_y:
                continue
            corners = [
                (_fixed(min(max(px, lo_x), hi_x)), _fixed(min(max(py, lo_y), hi_y)))
                for px, py in ((x1, y1), (x2, y2))
            ]
            cv2.rectangle(canvas, corners[0], corners[1], color_box, thickness, cv2.LINE_AA, _SHIFT)

    return canvas


def draw_poses_from_result(image: np.ndarray, result: Mapping[str, Any], **kwargs: Any) -> np.ndarray:
    """`draw_poses` on one per-image PoseEstimator result dict ("keypoints", and optionally "keypoint_scores",
    "boxes"); other keyword arguments (keypoint_set, score_threshold, radius, ...) are passed through."""
    if not isinstance(result, Mapping):
        raise ValueError(f"result must be a dict with 'keypoints' (and 'keypoint_scores', 'boxes'), got "
                         f"{type(result).__name__}")
    if "keypoints" not in result:
        raise ValueError(f"result has no 'keypoints' entry (keys: {sorted(map(str, result))})")
    clashing = sorted(set(kwargs) & {"keypoints", "keypoint_scores", "boxes"})
    if clashing:
        raise TypeError(f"draw_poses_from_result takes {', '.join(clashing)} from result, not as keyword arguments")
    return draw_poses(
        image,
        result["keypoints"],
        keypoint_scores=result.get("keypoint_scores"),
        boxes=result.get("boxes"),
        **kwargs,
    )
