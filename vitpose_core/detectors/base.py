"""What every detector shares: the `Detector` call contract, `DetectorError`, image checks and option checks.

A detector is called with a list of HxWx3 uint8 RGB images, numpy arrays or torch tensors on any device (anything
else is refused with a one-line `DetectorError`), and returns per image `(boxes, scores)`: boxes (n, 4) float32 COCO
xywh in image pixels, clipped to the image (boxes left with no area are dropped), scores (n,) float32, persons only,
sorted by score descending; (0, 4) / (0,) arrays when there is none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# Default score thresholds (`score_threshold=None`): chosen from person box AP against boxes per image handed to the
# pose model on the shared COCO sets (`benchmarks/bench_detectors.py`; figures in the README's Benchmarks section).
DEFAULT_THRESHOLDS = {"yolox": 0.1, "rtmdet": 0.3, "hf": 0.3}
COMMON_OPTIONS = {"max_detections"}


class DetectorError(ValueError):
    """A detector ref that cannot be loaded (or a bad call); the message is one line naming the ref."""


def is_image(image: Any) -> bool:
    """An HxWx3 uint8 numpy array or torch tensor (any device)."""
    if isinstance(image, np.ndarray):
        uint8 = image.dtype == np.uint8
    elif isinstance(image, torch.Tensor):
        uint8 = image.dtype == torch.uint8
    else:
        return False
    return uint8 and image.ndim == 3 and image.shape[2] == 3


def host_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    return image.cpu().numpy() if isinstance(image, torch.Tensor) else image


def check_options(options: dict[str, Any], allowed: set[str], kind: str, ref: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DetectorError(
            f"detector {ref!r}: unknown option(s) {', '.join(unknown)} for a {kind} detector "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def positive_int(value: Any, what: str, ref: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0 or number != value:
        raise DetectorError(f"detector {ref!r}: {what} must be a positive integer, got {value!r}")
    return number


def input_hw(value: Any, ref: str) -> tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2:
        raise DetectorError(f"detector {ref!r}: input_size must be an int or (height, width), got {value!r}")
    return positive_int(pair[0], "input_size", ref), positive_int(pair[1], "input_size", ref)


class Detector:
    """Callable person detector: `detector(images) -> [(boxes xywh (n, 4) float32, scores (n,) float32), ...]`."""

    name: str
    score_threshold: float
    device: str

    def __init__(self, name: str, score_threshold: float, device: str, max_detections: int = 100):
        self.name = name
        self.score_threshold = float(score_threshold)
        self.device = device
        self.max_detections = int(max_detections)

    def __call__(self, images: Sequence[np.ndarray | torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3:
            raise DetectorError(f"detector {self.name}: pass a list of images, not one image")
        images = list(images)
        for i, image in enumerate(images):
            if not is_image(image):
                shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
                got = f"{shape} {getattr(image, 'dtype', '')}".strip()
                raise DetectorError(
                    f"detector {self.name}: image {i} must be an HxWx3 uint8 RGB array or tensor, got {got}"
                )
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise DetectorError(f"detector {self.name}: image {i} is empty ({tuple(image.shape)})")
        if not images:
            return []
        return self.detect(images)

    def detect(self, images: list[np.ndarray | torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, score_threshold={self.score_threshold}, "
                f"device={self.device!r})")
