"""Person crops: COCO boxes -> centre/scale -> unbiased (UDP) affine warp -> normalised model input.

Geometry (ViTPose / transformers' VitPoseImageProcessor): a box (x, y, w, h) becomes a centre (x + w/2, y + h/2)
and a size widened or heightened to the model's aspect ratio, then padded by 1.25. UDP maps the crop's pixel
*centres* 0..W-1 onto that size exactly: crop pixel u sits at image x = cx - sw/2 + u * sw / (W - 1). The heatmap
decoder inverts the same map with the heatmap's own width, so crop and decode agree by construction.

Two warps with one geometry: `warp_crops_cv2` (CPU, cv2.warpAffine per box) and `warp_crops_torch` (any device,
grid_sample per image: each uint8 image goes to the device once, all its boxes are sampled in one call).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PADDING = 1.25


def boxes_to_center_scale(
    boxes: np.ndarray, aspect_ratio: float, padding: float = PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """COCO xywh boxes (N, 4) -> centres (N, 2) and padded region sizes (N, 2) in image pixels (w, h).

    `aspect_ratio` is the model input's width / height (192 / 256 for ViTPose).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    center = boxes[:, :2] + boxes[:, 2:] * 0.5
    w, h = boxes[:, 2].copy(), boxes[:, 3].copy()
    wide = w > aspect_ratio * h
    h[wide] = w[wide] / aspect_ratio
    w[~wide] = h[~wide] * aspect_ratio
    size = np.stack([w, h], axis=1) * np.float32(padding)
    return center.astype(np.float32), size.astype(np.float32)


def crop_to_image_matrix(center: np.ndarray, size: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """(N, 2, 3) affine maps from crop pixel (u, v) to image pixel (x, y), UDP: pixel centres at the ends."""
    out_w, out_h = out_wh
    sx = size[:, 0] / (out_w - 1.0)
    sy = size[:, 1] / (out_h - 1.0)
    m = np.zeros((len(center), 2, 3), dtype=np.float64)
    m[:, 0, 0] = sx
    m[:, 0, 2] = center[:, 0] - size[:, 0] * 0.5
    m[:, 1, 1] = sy
    m[:, 1, 2] = center[:, 1] - size[:, 1] * 0.5
    return m


def warp_crops_cv2(image: np.ndarray, center: np.ndarray, size: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Crops of one HxWx3 uint8 image -> (n, out_h, out_w, 3) uint8, bilinear, black outside the image."""
    out_h, out_w = out_hw
    crops = np.empty((len(center), out_h, out_w, 3), dtype=np.uint8)
    for i, matrix in enumerate(crop_to_image_matrix(center, size, (out_w, out_h))):
        crops[i] = cv2.warpAffine(
            image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
        )
    return crops


def warp_crops_torch(image: torch.Tensor, center: np.ndarray, size: np.ndarray, out_hw: tuple[int, int]) -> torch.Tensor:
    """Crops of one (3, H, W) image tensor (any dtype, any device) -> (n, 3, out_h, out_w) float32 in 0..255."""
    out_h, out_w = out_hw
    height, width = image.shape[-2:]
    matrix = torch.as_tensor(crop_to_image_matrix(center, size, (out_w, out_h)), dtype=torch.float32,
                             device=image.device)
    u = torch.arange(out_w, device=image.device, dtype=torch.float32)
    v = torch.arange(out_h, device=image.device, dtype=torch.float32)
    x = matrix[:, 0, 0, None] * u + matrix[:, 0, 2, None]  # (n, out_w)
    y = matrix[:, 1, 1, None] * v + matrix[:, 1, 2, None]  # (n, out_h)
    # grid_sample with align_corners=True puts -1/+1 on the first/last pixel centres, as image pixels are indexed.
    gx = (2.0 * x / max(width - 1, 1) - 1.0)[:, None, :].expand(-1, out_h, -1)
    gy = (2.0 * y / max(height - 1, 1) - 1.0)[:, :, None].expand(-1, -1, out_w)
    grid = torch.stack([gx, gy], dim=-1)
    source = image.float().unsqueeze(0).expand(len(center), -1, -1, -1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def normalize(crops: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) RGB in 0..255 -> ImageNet-normalised float32, contiguous.

    A uint8 channels-last view (as crops warped on the CPU arrive) is made contiguous before the float passes: three
    contiguous passes cost about a quarter of the same arithmetic over strided memory."""
    mean = torch.tensor(IMAGENET_MEAN, device=crops.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=crops.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return torch.sub(crops.contiguous().float(), mean).div_(std)
