"""Heatmaps -> keypoints in image pixels: argmax, DARK sub-pixel refinement, inverse UDP transform.

All in torch, batched over every crop at once, on whatever device the heatmaps are on. Indices are gathered per crop
(int64), so the result is right for any number of crops (transformers builds one float32 flat index over the whole
batch and drifts by a heatmap pixel from about 300 crops on).

DARK fits a quadratic to the log of a blurred heatmap around its maximum. The blur decides how robust that fit is:
  * "original" (default): ViTPose / mmpose 0.x `post_dark_udp` with modulate kernel 11 -- an 11x11 Gaussian (sigma 2,
    as cv2 derives it), zero padding, rescaled to keep each map's maximum. Wider, so steadier on noisy real heatmaps.
  * "transformers": VitPoseImageProcessor's post-processing -- scipy gaussian_filter, sigma 0.8, radius 5, mirror
    padding, no rescaling.
  * "none": DARK on the raw heatmap.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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
    n, k, h, w = heatmaps.shape
    scores, flat_index = heatmaps.flatten(2).max(dim=-1)
    px, py = flat_index % w, flat_index // w
    log_map = torch.log(blurred(heatmaps, blur).clamp(0.001, 50.0))
    padded = F.pad(log_map.reshape(n * k, 1, h, w), (1, 1, 1, 1), mode="replicate").reshape(n, k, -1)
    row = w + 2
    centre = (py + 1) * row + (px + 1)

    def at(dx: int, dy: int) -> torch.Tensor:
        return padded.gather(2, (centre + dy * row + dx).unsqueeze(-1)).squeeze(-1)

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


def blurred(heatmaps: torch.Tensor, blur: str) -> torch.Tensor:
    if blur == "none":
        return heatmaps
    if blur == "original":
        kernel = gaussian_kernel(11, 0.3 * ((11 - 1) * 0.5 - 1) + 0.8, heatmaps.device)  # cv2's sigma for ksize 11
        out = separable_conv(heatmaps, kernel, pad_mode="constant")
        peak = heatmaps.amax(dim=(2, 3), keepdim=True)
        out_peak = out.amax(dim=(2, 3), keepdim=True)
        return out * torch.where(out_peak != 0, peak / out_peak, torch.ones_like(peak))
    if blur == "transformers":
        return separable_conv(heatmaps, gaussian_kernel(11, 0.8, heatmaps.device), pad_mode="symmetric")
    raise ValueError(f"blur must be one of {', '.join(BLURS)}, got {blur!r}")


def gaussian_kernel(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float().to(device)


def separable_conv(maps: torch.Tensor, kernel: torch.Tensor, pad_mode: str) -> torch.Tensor:
    n, k, h, w = maps.shape
    r = len(kernel) // 2
    x = maps.reshape(n * k, 1, h, w)
    if pad_mode == "symmetric":  # scipy's "reflect": the edge pixel is repeated (d c b a | a b c d)
        x = torch.cat([x[..., :r].flip(-1), x, x[..., -r:].flip(-1)], dim=-1)
        x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], dim=-2)
    else:
        x = F.pad(x, (r, r, r, r))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.reshape(n, k, h, w)


def flip_back(heatmaps: torch.Tensor, flip_permutation: list[int]) -> torch.Tensor:
    """Heatmaps of mirrored crops -> heatmaps of the original crops: mirror back, swap left/right channels."""
    return heatmaps.flip(-1)[:, flip_permutation]


def rescore(box_scores: np.ndarray, keypoint_scores: np.ndarray, threshold: float = 0.2) -> np.ndarray:
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
