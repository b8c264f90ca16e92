"""`PoseEstimator`: the whole top-down algorithm for a list of images, in one process.

images -> (detector | given boxes) -> crops of every box of every image, batched -> ViTPose (+ mirrored crops for
the flip test) -> heatmaps -> keypoints in image pixels -> per-image result dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from .crops import boxes_to_center_scale, normalize, warp_crops_cv2, warp_crops_torch
from .heatmap_decoding import decode_heatmaps, flip_back, rescore
from .detectors import is_image
from .devices import check_device
from .keypoint_sets import KeypointSet, get_keypoint_set, keypoint_set_for_count
from .model import ViTPose
from .stage_clock import StageClock, timed

# Default crops per forward. On CPU small batches stay in cache (ViTPose-S: ~108 ms/crop at 3, ~145 at 32).
CPU_BATCH, GPU_BATCH = 8, 64


class PoseEstimator:
    """Top-down pose estimation: `estimator(images, boxes=None, box_scores=None, dataset_index=None)`.

    model: a `ViTPose` (see `load_pose_model`); detector: a callable images -> [(boxes xywh, scores)] used when no
    boxes are given; flip_test: average with the mirrored crops' heatmaps; device: where crops, model and decoding run.
    Options: batch_size (crops per forward), crop_backend ("auto": cv2 on CPU, torch elsewhere), blur (DARK blur, see
    `decoding`), compile (torch.compile the model), keypoint_set (defaults from the model's keypoint count), clock
    (a `StageClock` timing the "crop", "model" and "heatmaps" stages; None: untimed).
    """

    def __init__(
        self,
        model: ViTPose,
        detector: Callable[[list[np.ndarray]], list[tuple[np.ndarray, np.ndarray]]] | None = None,
        flip_test: bool = False,
        device: str | torch.device = "cpu",
        *,
        batch_size: int | None = None,
        crop_backend: str = "auto",
        blur: str = "original",
        compile: bool = False,
        keypoint_set: KeypointSet | str | None = None,
        clock: StageClock | None = None,
    ) -> None:
        self.device = check_device(device)
        self.model = model.to(self.device).eval()
        self.dtype = next(model.parameters()).dtype
        self.detector = detector
        self.flip_test = flip_test
        self.batch_size = batch_size or (CPU_BATCH if self.device.type == "cpu" else GPU_BATCH)
        if crop_backend not in ("auto", "cv2", "torch"):
            raise ValueError(f"crop_backend must be auto, cv2 or torch, got {crop_backend!r}")
        self.crop_backend = ("cv2" if self.device.type == "cpu" else "torch") if crop_backend == "auto" else crop_backend
        self.blur = blur
        self.forward = torch.compile(self.model) if compile else self.model
        self.keypoint_set = (
            get_keypoint_set(keypoint_set, num_keypoints=model.config.num_keypoints)
            if keypoint_set is not None else None
        )
        height, width = model.config.image_size
        self.input_hw = (height, width)
        self.clock = clock

    # ------------------------------------------------------------------------------------------------------------

    def __call__(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray] | None = None,
        box_scores: Sequence[np.ndarray] | None = None,
        dataset_index: int | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Keypoints for every person of every image; see the module docstring.

        images: HxWx3 uint8 RGB numpy arrays, or torch tensors of that shape (an image decoded on the GPU is cropped
        where it is).

        Boxes that cannot be cropped (under a pixel, over 8x the image, wholly outside it) are left out of the
        results.
        """
        images = [check_image(image, i) for i, image in enumerate(images)]
        if boxes is None:
            if self.detector is None:
                raise ValueError("no boxes given and no detector: pass boxes=... or PoseEstimator(detector=...)")
            with timed(self.clock, "detect", device_work=True):
                detections = self.detector(images) if images else []
            boxes = [d[0] for d in detections]
            box_scores = [d[1] for d in detections]
        boxes = [check_boxes(b, i) for i, b in enumerate(boxes)]
        if len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but boxes for {len(boxes)}")
        if box_scores is None:
            box_scores = [np.ones(len(b), np.float32) for b in boxes]
        box_scores = [np.asarray(s, np.float32).reshape(-1) for s in box_scores]
        for i, (b, s) in enumerate(zip(boxes, box_scores)):
            if len(b) != len(s):
                raise ValueError(f"image {i}: {len(b)} boxes but {len(s)} box scores")
        keep = [usable_boxes(b, image.shape[:2]) for b, image in zip(boxes, images)]
        boxes = [b[k] for b, k in zip(boxes, keep)]
        box_scores = [s[k] for s, k in zip(box_scores, keep)]

        keypoints, keypoint_scores = self.estimate(images, boxes, dataset_index)
        results, start = [], 0
        for b, s in zip(boxes, box_scores):
            end = start + len(b)
            kp_scores = keypoint_scores[start:end]
            results.append({
                "boxes": b,
                "box_scores": s,
                "keypoints": keypoints[start:end],
                "keypoint_scores": kp_scores,
                "scores": rescore(s, kp_scores),
            })
            start = end
        return results

    def estimate(
        self, images: list[np.ndarray], boxes: list[np.ndarray], dataset_index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (total boxes, K, 2) and scores (total boxes, K) for all boxes of all images, batched."""
        owners = np.concatenate([np.full(len(b), i) for i, b in enumerate(boxes)]) if boxes else np.zeros(0, int)
        all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
        k = self.output_keypoints(dataset_index)
        keypoints = np.zeros((len(all_boxes), k, 2), np.float32)
        scores = np.zeros((len(all_boxes), k), np.float32)
        uploaded: dict[int, torch.Tensor] = {}  # torch backend: each image goes to the device once
        for start in range(0, len(all_boxes), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            with timed(self.clock, "crop", device_work=True):
                pixel_values = self.crops(images, owners[chunk], all_boxes[chunk], uploaded)
            with timed(self.clock, "model", device_work=True):
                heatmaps = self.heatmaps(pixel_values, dataset_index)
            with timed(self.clock, "heatmaps", device_work=True):
                kp, sc = decode_heatmaps(heatmaps, all_boxes[chunk], blur=self.blur)
                keypoints[chunk], scores[chunk] = kp.cpu().numpy(), sc.cpu().numpy()
            if start + self.batch_size < len(owners):  # owners ascend: earlier images are done with
                for done in [i for i in uploaded if i < owners[start + self.batch_size]]:
                    del uploaded[done]
        return keypoints, scores

    def preprocess(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> torch.Tensor:
        """The crops the model sees, (total boxes, 3, H, W) float32 normalised, in image then box order."""
        images = [check_image(image, i) for i, image in enumerate(images)]
        boxes = [check_boxes(b, i) for i, b in enumerate(boxes)]
        owners = np.concatenate([np.full(len(b), i) for i, b in enumerate(boxes)]) if boxes else np.zeros(0, int)
        all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
        return self.crops(images, owners, all_boxes, {})

    # ------------------------------------------------------------------------------------------------------------

    def crops(
        self, images: list[np.ndarray], owners: np.ndarray, boxes: np.ndarray, uploaded: dict[int, torch.Tensor]
    ) -> torch.Tensor:
        height, width = self.input_hw
        center, size = boxes_to_center_scale(boxes, aspect_ratio=width / height)
        parts = []
        for owner in dict.fromkeys(owners.tolist()):  # images in order of first appearance
            rows = owners == owner
            image = images[owner]
            if self.crop_backend == "cv2":
                pixels = image.cpu().numpy() if isinstance(image, torch.Tensor) else image
                warped = warp_crops_cv2(pixels, center[rows], size[rows], self.input_hw)
                parts.append(torch.from_numpy(warped).to(self.device).permute(0, 3, 1, 2))
            else:
                if owner not in uploaded:
                    with timed(self.clock, "upload"):  # a host copy into pinned memory, inside "crop"
                        uploaded[owner] = self.upload(image).permute(2, 0, 1)
                parts.append(warp_crops_torch(uploaded[owner], center[rows], size[rows], self.input_hw))
        if not parts:
            return torch.zeros((0, 3, height, width), device=self.device)
        return normalize(torch.cat(parts))

    def upload(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An HxWx3 image on the estimator's device; from host memory through a pinned buffer, so the copy runs
        beside the GPU's work instead of blocking it."""
        if isinstance(image, torch.Tensor):
            return image.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            pinned = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
            pinned.numpy()[...] = image  # the one host copy, straight into page-locked memory
            return pinned.to(self.device, non_blocking=True)
        pixels = torch.from_numpy(image) if image.flags.writeable else torch.tensor(image)
        return pixels.to(self.device)

    @torch.inference_mode()
    def heatmaps(self, pixel_values: torch.Tensor, dataset_index: int | None = None) -> torch.Tensor:
        """Model heatmaps (float32) for normalised crops, averaged with the mirrored crops' when flip_test is on."""
        x = pixel_values.to(self.device, self.dtype)
        index = None if dataset_index is None else torch.full((len(x),), int(dataset_index), device=self.device)
        heatmaps = self.forward(x, index).float()
        if self.flip_test:
            mirrored = self.forward(x.flip(-1), index).float()
            heatmaps = 0.5 * (heatmaps + flip_back(mirrored, self.flip_permutation(dataset_index)))
        return heatmaps

    def output_keypoints(self, dataset_index: int | None) -> int:
        return head_keypoints(self.model.config, dataset_index)

    def keypoints_of(self, dataset_index: int | None) -> KeypointSet:
        """Keypoint metadata of the head answering `dataset_index` (flip pairs for the flip test)."""
        if self.keypoint_set is not None and self.keypoint_set.num_keypoints == self.output_keypoints(dataset_index):
            return self.keypoint_set
        return head_keypoint_set(self.model.config, dataset_index)

    def flip_permutation(self, dataset_index: int | None) -> list[int]:
        return self.keypoints_of(dataset_index).flip_permutation()


def head_keypoints(config, dataset_index: int | None) -> int:
    """How many keypoints the head answering `dataset_index` predicts (ViTPose++ keeps one head per dataset)."""
    if dataset_index is None or not config.associate_heads:
        return config.num_keypoints
    return config.num_heads_out[int(dataset_index)]


def head_keypoint_set(config, dataset_index: int | None) -> KeypointSet:
    """Keypoint metadata of the head answering `dataset_index`, from the model's config alone."""
    k = head_keypoints(config, dataset_index)
    if dataset_index is not None:
        # ViTPose++: the dataset's own keypoints when its head answers; HF conversions answer with COCO's head.
        candidate = get_keypoint_set(int(dataset_index))
        if candidate.num_keypoints == k:
            return candidate
    return keypoint_set_for_count(k)


def check_image(image: Any, index: int) -> np.ndarray | torch.Tensor:
    """An HxWx3 uint8 RGB numpy array, or a torch tensor of that shape and dtype on any device (an image decoded
    on the GPU stays there)."""
    if not isinstance(image, torch.Tensor):
        image = np.asarray(image)
    if not is_image(image):
        raise ValueError(f"image {index}: expected an HxWx3 uint8 RGB array, got {image.dtype} {tuple(image.shape)}")
    return image if isinstance(image, torch.Tensor) else np.ascontiguousarray(image)


MAX_BOX_TO_IMAGE = 8.0  # a "person" box larger than 8x the image's longer side is no person
UNDER_A_PIXEL, OVER_8X, OUTSIDE = "under a pixel", "over 8x the image", "wholly outside the image"


def box_problems(boxes: np.ndarray, image_hw: tuple[int, int]) -> list[str | None]:
    """Why each COCO xywh box (n, 4), in the pixels of an image of `image_hw`, cannot be cropped, or None: under a
    pixel wide or high (UNDER_A_PIXEL), wider or higher than MAX_BOX_TO_IMAGE times the image's longer side
    (OVER_8X), or not overlapping the image (OUTSIDE); the first that applies."""
    height, width = image_hw
    x, y, w, h = np.asarray(boxes, np.float32).reshape(-1, 4).T
    limit = MAX_BOX_TO_IMAGE * max(height, width)
    reasons = np.select([(w < 1) | (h < 1), (w > limit) | (h > limit),
                         (x >= width) | (y >= height) | (x + w <= 0) | (y + h <= 0)],
                        [1, 2, 3], default=0)
    return [(None, UNDER_A_PIXEL, OVER_8X, OUTSIDE)[r] for r in reasons]


def usable_boxes(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Mask of boxes a crop can be taken from (no `box_problems`)."""
    return np.array([p is None for p in box_problems(boxes, image_hw)], dtype=bool).reshape(-1)


def check_boxes(boxes: Any, index: int) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32)
    boxes = boxes.reshape(-1, 4) if boxes.size else np.zeros((0, 4), np.float32)
    if boxes.shape[1:] != (4,) or not np.isfinite(boxes).all():
        raise ValueError(f"image {index}: boxes must be finite (n, 4) COCO xywh, got shape {boxes.shape}")
    return boxes
