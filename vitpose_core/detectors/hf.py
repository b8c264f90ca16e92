"""transformers object-detection models (AutoModelForObjectDetection + AutoImageProcessor), persons only.

A local folder with config.json, or a hub id ("PekingU/rtdetr_r50vd_coco_o365") fetched by `load_detector`. Only the
classes whose `config.id2label` name is "person" are kept. Images go to the image processor as host arrays, in
chunks of `batch_size`. Default score threshold 0.3: the reference RT-DETR pipeline's (no pretrained RT-DETR
weights were at hand to measure one; see `base.DEFAULT_THRESHOLDS`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..hub import one_line
from .base import (
    COMMON_OPTIONS,
    DEFAULT_THRESHOLDS,
    Detector,
    DetectorError,
    check_options,
    host_image,
    positive_int,
)
from .letterbox import boxes_to_image_xywh

HF_OPTIONS = COMMON_OPTIONS | {"batch_size"}


class HFDetector(Detector):
    """transformers object-detection model: processor -> model -> post_process_object_detection, "person" kept."""

    def __init__(self, model: Any, processor: Any, person_ids: set[int], name: str, score_threshold: float,
                 device: str, *, batch_size: int = 8, max_detections: int = 100):
        super().__init__(name, score_threshold, device, max_detections)
        self.model, self.processor, self.person_ids = model, processor, sorted(person_ids)
        self.batch_size = positive_int(batch_size, "batch_size", name)

    def detect(self, images: list[np.ndarray | torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        images = [host_image(image) for image in images]  # the image processors work on host arrays
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            inputs = self.processor(images=chunk, return_tensors="pt")
            inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
            with torch.inference_mode():
                outputs = self.model(**inputs)
            sizes = torch.tensor([image.shape[:2] for image in chunk])
            found = self.processor.post_process_object_detection(
                outputs, target_sizes=sizes, threshold=self.score_threshold
            )
            for image, result in zip(chunk, found):
                labels = result["labels"].cpu().numpy()
                keep = np.isin(labels, self.person_ids)
                boxes = result["boxes"].float().cpu().numpy()[keep]
                scores = result["scores"].float().cpu().numpy()[keep]
                results.append(boxes_to_image_xywh(boxes, scores, image.shape[:2], 1.0, self.max_detections))
        return results


def load_hf(folder: Path, ref: str, device: str, score_threshold: float | None, options: dict) -> Detector:
    check_options(options, HF_OPTIONS, "transformers", ref)
    if not (folder / "config.json").is_file():
        raise DetectorError(f"detector {ref!r}: folder has no config.json (expected a transformers model folder)")
    try:
        # lazy: the optional [hf] extra, and slow to import
        from transformers import AutoImageProcessor, AutoModelForObjectDetection
    except ImportError as exc:
        raise DetectorError(
            f"detector {ref!r}: transformers detectors need transformers ({one_line(exc, 120)}); "
            "pip install 'vitpose-batch[hf]'"
        ) from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"detector {ref!r}: CUDA is not available; running on the CPU", RuntimeWarning, stacklevel=3)
        device = "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise DetectorError(f"detector {ref!r}: unknown device {device!r}") from None
    try:
        model = AutoModelForObjectDetection.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - wrong architecture, missing weights, corrupt files
        raise DetectorError(f"detector {ref!r}: not a transformers object-detection model ({one_line(exc)})") from None
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    person_ids = {i for i, label in id2label.items() if label.strip().lower() == "person"}
    if not person_ids:
        shown = ", ".join(list(id2label.values())[:5]) + (", ..." if len(id2label) > 5 else "")
        raise DetectorError(f"detector {ref!r}: model has no 'person' label in config.id2label ({shown})")
    try:
        processor = AutoImageProcessor.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001
        raise DetectorError(f"detector {ref!r}: cannot load its image processor ({one_line(exc)})") from None
    if not hasattr(processor, "post_process_object_detection"):
        raise DetectorError(f"detector {ref!r}: image processor {type(processor).__name__} has no "
                            "post_process_object_detection")
    model = model.to(device).eval().requires_grad_(False)
    threshold = DEFAULT_THRESHOLDS["hf"] if score_threshold is None else score_threshold
    return HFDetector(model, processor, person_ids, f"hf:{model.config.model_type}:{ref}", threshold, device,
                      batch_size=options.get("batch_size", 8),
                      max_detections=positive_int(options.get("max_detections", 100), "max_detections", ref))
