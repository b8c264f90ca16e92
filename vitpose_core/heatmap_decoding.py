"""Heatmaps -> keypoints in image pixels: argmax, DARK sub-pixel refinement, inverse UDP transform.

All in torch, batched over every crop at once, on whatever device the heatmaps are on. Indices are gathered per crop
(int64), so the result is right for any number of crops (transformers builds one float32 flat index over the whole
batch and drifts by a heatmap pixel from about 300 crops on).

DARK fits a quadratic to the log of a blurred heatmap around its maximum. The blur decides how robust that fit is:
  * "original" (default): ViTPose / mmpose 0.x `post_dark_udp` with modulation kernel 11 -- cv2.GaussianBlur of each
    map in place, 11x11, sigma 2 (as cv2 derives it), OpenCV's default border (reflect-101). Wider, so steadier on
    noisy real heatmaps.
  * "transformers": VitPoseImageProcessor's post-processing -- scipy gaussian_filter, sigma 0.8, radius 5, scipy's
    "reflect" border (the edge pixel repeated).
  * "none": DARK on the raw heatmap.
DARK reads the blurred map only at the argmax and its 8 neighbours, so the blur is computed only there: from the
13x13 patch around each maximum, gathered with the blur's own border reflection -- the whole-map blur's values,
exactly, at a small fraction of its cost (see benchmarks/bench_decoding.py).
"""

from __future__ import annotations

import numpy as np
import torch

from .crops import boxes_to_center_scale

BLURS = ("original", "transformers", "none")
MAX_STEP = 1.0  # heatmap pixels a DARK step may move the argmax


def decode_heatmaps(
    heatmaps: torch.Tensor | np.ndarray, boxes: torch.Tensor | np.ndarray, blur: str = "original"
) -> tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]:
    """Decode (N, K, h, w) heatmaps of crops taken at COCO xywh `boxes` (N, 4) into image-pixel keypoints.

    The crop geometry is the model's (padding 1.25, aspect ratio w/h of the heatmap = that of the model input, UDP).
    Returns keypoints (N, K, 2) and scores (N, K) (the heatmap maxima), as numpy when given numpy, else torch on the
    heatmaps' device.
    """
    as_numpy = isinstance(heatmaps, np.ndarray)
    hm = torch.as_tensor(heatmaps)
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, h, w), got shape {tuple(hm.shape)}")
    box_array = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes, np.float32)
    box_array = box_array.reshape(-1, 4) if box_array.size else np.zeros((0, 4), np.float32)
    if len(box_array) != hm.shape[0]:
        raise ValueError(f"{hm.shape[0]} heatmaps but {len(box_array)} boxes: one box per heatmap is needed")
    hm = hm.float()
    n, k, h, w = hm.shape
    if n == 0:
        keypoints, scores = hm.new_zeros((0, k, 2)), hm.new_zeros((0, k))
    else:
        coords, scores = refine_peaks(hm, blur)
        center, size = boxes_to_center_scale(box_array, aspect_ratio=w / h)
        center_t = torch.as_tensor(center, device=hm.device)[:, None, :]
        size_t = torch.as_tensor(size, device=hm.device)[:, None, :]
        step = size_t / torch.tensor([w - 1.0, h - 1.0], device=hm.device)
        keypoints = coords * step + center_t - size_t * 0.5
    if as_numpy:
        return keypoints.cpu().numpy(), scores.cpu().numpy()
    return keypoints, scores


def refine_peaks(heatmaps: torch.Tensor, blur: str = "original") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, h, w) -> DARK-refined peak coordinates (N, K, 2) in heatmap pixels (x, y) and peak values (N, K)."""
    if blur not in BLURS:
        raise ValueError(f"blur must be one of {', '.join(BLURS)}, got {blur!r}")
    n, k, h, w = heatmaps.shape
    scores, flat_index = heatmaps.flatten(2).max(dim=-1)
    px, py = flat_index % w, flat_index // w
    # log of the (blurred) map at the argmax and its 8 neighbours, a neighbour off the map taking the border's value
    # (the references pad the log map by repeating its edge): the only values DARK reads.
    log_map = torch.log(neighbourhood(heatmaps, px, py, blur).clamp(0.001, 50.0))

    def at(dx: int, dy: int) -> torch.Tensor:
        return log_map[..., 1 + dy, 1 + dx]

    i0, ix1, ix1_, iy1, iy1_ = at(0, 0), at(1, 0), at(-1, 0), at(0, 1), at(0, -1)
    gx, gy = 0.5 * (ix1 - ix1_), 0.5 * (iy1 - iy1_)
    eps = float(np.finfo(np.float32).eps)
    dxx = ix1 - 2 * i0 + ix1_ + eps
    dyy = iy1 - 2 * i0 + iy1_ + eps
    dxy = 0.5 * (at(1, 1) - ix1 - iy1 + 2 * i0 - ix1_ - iy1_ + at(-1, -1))
    det = dxx * dyy - dxy * dxy
    # Newton step: -H^-1 g with H = [[dxx, dxy], [dxy, dyy]].
    ox = (dyy * gx - dxy * gy) / det
    oy = (dxx * gy - dxy * gx) / det
    offset = torch.stack([ox, oy], dim=-1)
    # The true maximum lies within half a pixel of the argmax, so a Newton step longer than a pixel means the
    # quadratic fit failed (flat or saddle neighbourhood; a peak under the 0.001 floor is clamped flat). The
    # references take such steps anyway -- up to 100+ heatmap px on noisy maps, far outside the crop; we keep the
    # argmax instead. Steps within a pixel are the references' exactly.
    valid = (torch.isfinite(offset) & (offset.abs() <= MAX_STEP)).all(dim=-1, keepdim=True) \
        & (scores > 0.001).unsqueeze(-1)
    offset = torch.where(valid, offset, torch.zeros_like(offset))
    coords = torch.stack([px, py], dim=-1).float() - offset
    return coords, scores


# blur -> (taps, sigma, how the map continues past its border)
BLUR_SPECS = {
    "original": (11, 0.3 * ((11 - 1) * 0.5 - 1) + 0.8, "reflect101"),  # cv2.GaussianBlur((11, 11), 0): sigma 2
    "transformers": (11, 0.8, "symmetric"),  # scipy gaussian_filter(sigma=0.8, radius=5), mode "reflect"
}


def reflect(index: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Indices past [0, size) folded back the way a blur's border mode reads them.

    reflect101 (OpenCV's default): ... c b | a b c d | c b ...;  symmetric (scipy's "reflect"): ... b a | a b c d | d c
    """
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1) if mode == "reflect101" else 2 * size
    folded = index.remainder(period)
    back = period - folded if mode == "reflect101" else period - 1 - folded
    return torch.where(folded >= size, back, folded)


def neighbourhood(heatmaps: torch.Tensor, px: torch.Tensor, py: torch.Tensor, blur: str) -> torch.Tensor:
    """(N, K, 3, 3): the (blurred) heatmap at the argmax (px, py) and its 8 neighbours, neighbours past the border
    clamped onto it.

    A blur of `taps` taps at those 9 points reads only the (taps + 2)^2 patch around the argmax, so only that patch
    is gathered (with the blur's own border reflection) and blurred: the whole-map blur's values there, exactly,
    at a fraction of its cost."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.flatten(2)
    steps = torch.arange(-1, 2, device=heatmaps.device)
    rows = (py.unsqueeze(-1) + steps).clamp(0, h - 1)  # (N, K, 3): the edge-padded neighbours
    cols = (px.unsqueeze(-1) + steps).clamp(0, w - 1)
    if blur == "none":
        return flat.gather(2, (rows[..., :, None] * w + cols[..., None, :]).flatten(2)).view(n, k, 3, 3)
    taps, sigma, mode = BLUR_SPECS[blur]
    r = taps // 2
    span = torch.arange(-r - 1, r + 2, device=heatmaps.device)  # the patch: taps + 2 wide, centred on the argmax
    patch_rows = reflect(py.unsqueeze(-1) + span, h, mode)
    patch_cols = reflect(px.unsqueeze(-1) + span, w, mode)
    patch = flat.gather(2, (patch_rows[..., :, None] * w + patch_cols[..., None, :]).flatten(2))
    patch = patch.view(n, k, taps + 2, taps + 2)
    kernel = gaussian_kernel(taps, sigma, heatmaps.device)
    along_x = patch.unfold(-1, taps, 1) @ kernel  # (N, K, taps + 2, 3): blurred along x at px-1, px, px+1
    blurred = along_x.transpose(-1, -2).unfold(-1, taps, 1) @ kernel  # (N, K, 3 [x], 3 [y])
    blurred = blurred.transpose(-1, -2)  # (N, K, 3 [y], 3 [x]) at (py-1..py+1, px-1..px+1)
    # a neighbour off the map reads the border pixel's blurred value (clamped index into the 3x3)
    pick_rows = (rows - py.unsqueeze(-1) + 1)[..., :, None].expand(n, k, 3, 3)
    pick_cols = (cols - px.unsqueeze(-1) + 1)[..., None, :].expand(n, k, 3, 3)
    return blurred.gather(-1, pick_cols).gather(-2, pick_rows)


def gaussian_kernel(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float().to(device)


def flip_back(heatmaps: torch.Tensor, flip_permutation: list[int]) -> torch.Tensor:
    """Heatmaps of mirrored crops -> heatmaps of the original crops: mirror back, swap left/right channels."""
    return heatmaps.flip(-1)[:, flip_permutation]


RESCORE_THRESHOLD = 0.2  # ViTPose's (mmpose's) rescoring: keypoints scored above it count towards the person score


def rescore(box_scores: np.ndarray, keypoint_scores: np.ndarray, threshold: float = RESCORE_THRESHOLD) -> np.ndarray:
    """ViTPose's person score: box score x mean of the keypoint scores above `threshold` (0 when none is)."""
    keypoint_scores = np.asarray(keypoint_scores, dtype=np.float64)
    confident = keypoint_scores > threshold
    counts = confident.sum(axis=-1)
    mean = np.where(counts > 0, (keypoint_scores * confident).sum(axis=-1) / np.maximum(counts, 1), 0.0)
    return (np.asarray(box_scores, dtype=np.float64) * mean).astype(np.float32)


def render_gaussians(points: np.ndarray, heatmap_hw: tuple[int, int], sigma: float = 2.0) -> np.ndarray:
    """Gaussians of peak 1 at heatmap-pixel `points` (N, K, 2) -> (N, K, h, w) float32, as ViTPose's targets are."""
    h, w = heatmap_hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx = xs[None, None] - points[..., 0, None, None]
    dy = ys[None, None] - points[..., 1, None, None]
    return np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)).astype(np.float32)


def image_to_heatmap(points: np.ndarray, boxes: np.ndarray, heatmap_hw: tuple[int, int]) -> np.ndarray:
    """The forward map of `decode_heatmaps`: image-pixel points (N, K, 2) of crops at `boxes` -> heatmap pixels."""
    h, w = heatmap_hw
    center, size = boxes_to_center_scale(boxes, aspect_ratio=w / h)
    step = size / np.array([w - 1.0, h - 1.0], dtype=np.float32)
    return ((np.asarray(points, np.float32) - center[:, None] + size[:, None] * 0.5) / step[:, None]).astype(np.float32)
