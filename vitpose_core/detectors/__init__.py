"""Person detectors for the top-down pipeline: YOLOX / RTMDet ONNX files and transformers object-detection models.

    detector = load_detector("../shared/models/yolox_nano.onnx")          # or rtmdet_nano_person.onnx, an HF folder
    [(boxes, scores), ...] = detector([rgb_uint8_image, ...])             # boxes: (n, 4) float32 COCO xywh
    detector([rgb_uint8_tensor_on_the_gpu, ...])                          # torch tensors too, left on their device

`load_detector(ref, device="cpu", score_threshold=None, **options)` accepts

* an ONNX file, told apart by its inputs/outputs (never by its file name): a YOLOX raw-head export (`yolox`) or an
  RTMDet mmdeploy export with NMS inside (`rtmdet`), run by onnxruntime (`onnx_runtime`);
* a transformers object-detection model (`hf`): a local folder with config.json, or a hub id fetched with
  huggingface_hub when the hub can be reached (a cached copy also works offline);
* either of those in object storage (s3://, gs://, ...), copied to a temporary folder first.

Options (unknown ones are refused): `num_threads` (onnxruntime intra-op threads; default: the CPU cores this process
may use, at most 8; pass 1 when several detectors share a machine; the pose job passes what Ray granted),
`batch_size` (images per model call, default 8; YOLOX falls back to 1 without a free batch dimension),
`input_size` (int or (h, w); RTMDet default 640, multiple of 32; YOLOX is fixed by its file), `nms_iou` (YOLOX,
default 0.45), `max_detections` (per image, default 100), `person_class` (ONNX YOLOX class index, default 0).

A detector takes a list of HxWx3 uint8 RGB images (numpy or torch, any device) and returns per image
`(boxes, scores)`: COCO xywh float32 boxes in image pixels and their scores, persons only, best first (`base`).
`score_threshold=None` picks the family's default (YOLOX 0.1, RTMDet 0.3, transformers 0.3), chosen from person box
AP against boxes per image on the shared COCO sets (`benchmarks/bench_detectors.py`, README "Benchmarks").

Every loading failure raises `DetectorError` (a ValueError) with a one-line message naming the ref and the problem.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import check_device
from ..hub import HUB_ID, copy_remote, hub_snapshot, local_path, one_line

# Besides __all__, every name of the former single module stays importable from here (F401: re-exports).
from .base import (  # noqa: F401
    COMMON_OPTIONS,
    DEFAULT_THRESHOLDS,
    Detector,
    DetectorError,
    check_options,
    host_image,
    input_hw,
    is_image,
    positive_int,
)
from .hf import HF_OPTIONS, HFDetector, load_hf  # noqa: F401
from .letterbox import (  # noqa: F401
    PAD_VALUE,
    boxes_to_image_xywh,
    letterbox,
    letterbox_shape,
    letterbox_torch,
    linear_taps,
    resize_like_cv2,
)
from .nms import box_iou_one, nms  # noqa: F401
from .onnx_runtime import (  # noqa: F401
    ONNX_OPTIONS,
    YOLOX_STRIDES,
    OnnxDetector,
    default_threads,
    onnx_layout,
    onnx_session,
    run_bound,
    yolox_batched_session,
)
from .rtmdet import RTMDET_MEAN, RTMDET_OPTIONS, RTMDET_STD, RTMDetDetector  # noqa: F401
from .yolox import YOLOX_OPTIONS, YoloxDetector, decode_yolox, yolox_grids

__all__ = [
    "Detector",
    "DetectorError",
    "HFDetector",
    "RTMDetDetector",
    "YoloxDetector",
    "boxes_to_image_xywh",
    "decode_yolox",
    "letterbox",
    "letterbox_torch",
    "load_detector",
    "nms",
    "yolox_grids",
]


def load_detector(
    ref: str | os.PathLike, device: str = "cpu", score_threshold: float | None = None, **options: Any
) -> Detector:
    """Load a person detector from an ONNX file (YOLOX / RTMDet), a transformers folder, or a hub id.

    `score_threshold`: None picks the measured default (YOLOX 0.1, RTMDet 0.3, transformers 0.3).
    Options: see the module docstring. Raises `DetectorError` with a one-line message on any failure.
    """
    name = str(ref)
    device = str(device)
    check_device(device)
    if score_threshold is not None:
        try:
            score_threshold = float(score_threshold)
        except (TypeError, ValueError):
            raise DetectorError(
                f"detector {name!r}: score_threshold must be a number, got {score_threshold!r}"
            ) from None
        if not 0.0 <= score_threshold <= 1.0:
            raise DetectorError(f"detector {name!r}: score_threshold must lie in [0, 1], got {score_threshold}")
    if "://" in name and not name.startswith("file://"):
        # Object storage (s3://, gs://, ...): a local copy for the session / transformers to load from.
        with tempfile.TemporaryDirectory(prefix="vitpose-detector-") as tmp:
            try:
                local_copy = copy_remote(name, tmp)
            except Exception as exc:  # noqa: BLE001 - missing object, no credentials, unreachable endpoint
                raise DetectorError(f"detector {name!r}: cannot fetch it ({one_line(exc)})") from None
            return load_detector(local_copy, device, score_threshold, **options)
    local = local_path(name)
    if local.is_dir():
        return load_hf(local, name, device, score_threshold, options)
    if local.is_file():
        return load_onnx(local, name, device, score_threshold, options)
    if local.exists():
        raise DetectorError(f"detector {name!r}: not a regular file or folder")
    if HUB_ID.match(name) and not name.lower().endswith(".onnx") and not name.startswith(("./", "../", "~")):
        folder = hub_snapshot(
            name, ["*.json", "*.safetensors", "*.bin", "*.txt"], DetectorError, "detector",
            "a local transformers folder (config.json + weights + preprocessor_config.json) or an .onnx file",
        )
        return load_hf(folder, name, device, score_threshold, options)
    raise DetectorError(
        f"detector {name!r} not found: no such file or folder, and not a hub id (org/name); "
        "pass an .onnx file (YOLOX or RTMDet) or a transformers object-detection folder"
    )


def load_onnx(path: Path, ref: str, device: str, score_threshold: float | None, options: dict) -> Detector:
    session, used = onnx_session(path, ref, device, options.get("num_threads"))
    layout = onnx_layout(session)
    threshold = DEFAULT_THRESHOLDS.get(layout, 0.0) if score_threshold is None else score_threshold
    max_det = positive_int(options.get("max_detections", 100), "max_detections", ref)
    if layout == "yolox":
        check_options(options, YOLOX_OPTIONS, "YOLOX", ref)
        classes = session.get_outputs()[0].shape[2] - 5
        person = options.get("person_class", 0)
        if not isinstance(person, (int, np.integer)) or not 0 <= person < classes:
            raise DetectorError(f"detector {ref!r}: person_class must be in [0, {classes}), got {person!r}")
        batch_size = positive_int(options.get("batch_size", 8), "batch_size", ref)
        batched = batch_size > 1 and yolox_batched_session(path, session, ref, used, options.get("num_threads"))
        return YoloxDetector(batched or session, f"yolox:{path.name}", threshold, used,
                             batch_size=batch_size if batched else 1, nms_iou=options.get("nms_iou", 0.45),
                             person_class=int(person), max_detections=max_det)
    if layout == "rtmdet":
        check_options(options, RTMDET_OPTIONS, "RTMDet", ref)
        return RTMDetDetector(session, f"rtmdet:{path.name}", threshold, used,
                              input_size=options.get("input_size", 640), batch_size=options.get("batch_size", 8),
                              max_detections=max_det)
    raise DetectorError(
        f"detector {ref!r}: ONNX model is neither a YOLOX raw-head export (images [1,3,H,W] -> output [1,N,5+C]) "
        f"nor an RTMDet export (input [B,3,H,W] -> dets [B,N,5], labels [B,N]); it has {layout}"
    )
