"""Person detectors for the top-down pipeline: YOLOX / RTMDet ONNX files and transformers object-detection models.

    detector = load_detector("../shared/models/yolox_nano.onnx")          # or rtmdet_nano_person.onnx, an HF folder
    [(boxes, scores), ...] = detector([rgb_uint8_image, ...])             # boxes: (n, 4) float32 COCO xywh

`load_detector(ref, device="cpu", score_threshold=None, **options)` accepts

* an ONNX file, told apart by its inputs/outputs (never by its file name):
  - YOLOX (raw head export): one input [1, 3, H, W] (fixed batch 1), one output [1, N, 5 + C] where N is the number of
    stride 8/16/32 grid cells of H x W. BGR 0-255 floats, letterbox with 114 at bottom/right, no normalisation.
    Columns: (cx, cy, w, h) grid offsets, objectness, C class scores; objectness and class scores come out of the
    exported graph already sigmoid-ed (only the box columns are raw). Decoded here: xy = (out + grid) * stride,
    wh = exp(out) * stride, score = obj * cls[person], then greedy NMS (IoU 0.45, option `nms_iou`).
  - RTMDet (mmdeploy export, NMS inside): input [B, 3, H, W] with dynamic B/H/W, outputs `dets` [B, N, 5]
    (x1, y1, x2, y2, score in input pixels) and `labels` [B, N]. BGR, letterbox with 114 at bottom/right, then
    (x - mean) / std. H and W must be multiples of 32 (other sizes fail inside the graph). Rows past the last
    detection are padding: score 0 with label -1 (or label 0 in a single-image call that found nothing). The graph
    already drops scores below about 0.05 and keeps at most 100 boxes per image.
* a transformers object-detection model (AutoModelForObjectDetection + AutoImageProcessor): a local folder with
  config.json, or a hub id ("PekingU/rtdetr_r50vd_coco_o365") fetched with huggingface_hub when the hub can be reached
  (a cached copy also works offline). Only the classes whose `config.id2label` name is "person" are kept.

Options (unknown ones are refused): `num_threads` (onnxruntime intra-op threads; default: the CPU cores this process
may use, at most 8; pass 1 when several detectors share a machine), `batch_size` (RTMDet / transformers images per
model call, default 8), `input_size` (int or (h, w); RTMDet default 640, multiple of 32; YOLOX is fixed by its
file), `nms_iou` (YOLOX, default 0.45), `max_detections` (per image, default 100), `person_class` (ONNX YOLOX class
index, default 0).

A detector is called with a list of HxWx3 uint8 RGB images and returns per image `(boxes, scores)`: boxes (n, 4)
float32 COCO xywh in image pixels, clipped to the image (boxes left with no area are dropped), scores (n,) float32,
persons only, sorted by score descending; (0, 4) / (0,) arrays when there is none. RTMDet letterboxes every image of
a call to the same input size and runs them in chunks of `batch_size` per session call; YOLOX is fixed at batch 1 and
loops. onnxruntime uses CUDAExecutionProvider when `device` starts with "cuda" and the provider is installed,
otherwise the CPU (with a warning if CUDA was asked for).

Default score thresholds (`score_threshold=None`), chosen from person box AP (pycocotools COCOeval, iouType bbox,
catIds [1], maxDets 100) measured with `benchmarks/bench_detectors.py` on the shared real COCO sets (coco-val-4:
4 images / 14 persons; coco-mini-train: 80 images / 172 persons), with the mean boxes per image handed to the pose
model:

    detector                threshold   AP coco-val-4   AP coco-mini-train   boxes / image (val-4, mini-train)
    YOLOX-nano 416x416         0.05         0.727            0.313                  4.2,  3.9
                               0.10         0.727            0.305                  3.5,  2.5   <- default
                               0.30         0.618            0.276                  2.8,  1.3
    RTMDet-nano 640x640        0.05         0.823            0.401                 62.8, 89.6
                               0.10         0.823            0.401                 24.5, 45.5
                               0.30         0.823            0.384                  3.8,  5.2   <- default
    (RTMDet-nano 416x416       0.10 / 0.30  0.744 / 0.744    0.371 / 0.326: 640 is clearly better)

YOLOX: 0.1 keeps the AP of 0.05 with a third fewer boxes; 0.3 costs 0.11 AP on coco-val-4. RTMDet scores are lower
and flatter (its graph keeps everything above ~0.05, up to 100 boxes): 0.1 still sends 25-45 boxes per image, 0.3
sends 4-5 for the same val AP and 0.017 less on mini-train. transformers models default to 0.3, the threshold of the
reference RT-DETR pipeline (no pretrained RT-DETR weights were at hand to measure). Lower thresholds (e.g. 0.05)
raise recall for COCO-style keypoint AP runs at the price of many more pose crops.

Speed on a 2-core CPU (onnxruntime 1.32, 2 intra-op threads, 32 mini-train images, pre/post-processing included):
YOLOX-nano ~59 ms/image; RTMDet-nano at 640 ~153 ms/image with batch_size 8 (~184 ms/image one image per call),
~54 ms/image at 416.

Every loading failure raises `DetectorError` (a ValueError) with a one-line message naming the ref and the problem.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .devices import check_device
from .hub import HUB_ID, copy_remote, hub_snapshot, local_path, one_line

__all__ = [
    "Detector",
    "DetectorError",
    "HFDetector",
    "RTMDetDetector",
    "YoloxDetector",
    "boxes_to_image_xywh",
    "decode_yolox",
    "letterbox",
    "load_detector",
    "nms",
    "yolox_grids",
]

DEFAULT_THRESHOLDS = {"yolox": 0.1, "rtmdet": 0.3, "hf": 0.3}
PAD_VALUE = 114
YOLOX_STRIDES = (8, 16, 32)
RTMDET_MEAN = np.array([103.53, 116.28, 123.675], dtype=np.float32)  # BGR order
RTMDET_STD = np.array([57.375, 57.12, 58.395], dtype=np.float32)
COMMON_OPTIONS = {"max_detections"}
ONNX_OPTIONS = COMMON_OPTIONS | {"num_threads"}
YOLOX_OPTIONS = ONNX_OPTIONS | {"nms_iou", "person_class"}
RTMDET_OPTIONS = ONNX_OPTIONS | {"batch_size", "input_size"}
HF_OPTIONS = COMMON_OPTIONS | {"batch_size"}


class DetectorError(ValueError):
    """A detector ref that cannot be loaded (or a bad call); the message is one line naming the ref."""


# ---------------------------------------------------------------------------------------------------------------
# Pure numpy maths
# ---------------------------------------------------------------------------------------------------------------


def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: int = PAD_VALUE) -> tuple[np.ndarray, float]:
    """Resize `image` (HxWxC) keeping its aspect ratio to fit `size` = (height, width); pad bottom/right.

    Returns the (height, width, C) canvas and the scale: a point (x, y) of the image lands on (x * scale, y * scale),
    so boxes found on the canvas map back with `boxes / scale`.
    """
    out_h, out_w = size
    h, w = image.shape[:2]
    scale = min(out_h / h, out_w / w)
    new_h, new_w = min(out_h, max(1, int(round(h * scale)))), min(out_w, max(1, int(round(w * scale))))
    canvas = np.full((out_h, out_w, *image.shape[2:]), pad_value, dtype=image.dtype)
    resized = image if (new_h, new_w) == (h, w) else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[:new_h, :new_w] = resized.reshape(new_h, new_w, *image.shape[2:])
    return canvas, scale


def yolox_grids(input_hw: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell (x, y) of every YOLOX anchor, row-major per stride, strides in order; and each anchor's stride.

    Returns grids (N, 2) float32 and strides (N, 1) float32 with N = sum over s of (H // s) * (W // s).
    """
    grids, steps = [], []
    for stride in strides:
        gh, gw = input_hw[0] // stride, input_hw[1] // stride
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        steps.append(np.full((gh * gw, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(steps).astype(np.float32)


def decode_yolox(raw: np.ndarray, grids: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """Turn raw YOLOX box columns (N, 4) = (cx, cy, w, h) offsets into (N, 4) x1, y1, x2, y2 input pixels."""
    raw = np.asarray(raw, dtype=np.float32)
    centre = (raw[:, :2] + grids) * strides
    with np.errstate(over="ignore"):
        size = np.exp(raw[:, 2:4]) * strides
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def box_iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against (N, 4) xyxy boxes."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of xyxy boxes; returns kept indices, highest score first.

    A box is suppressed when its IoU with an already kept, higher scoring box is above `iou_threshold`.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        order = rest[box_iou_one(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def boxes_to_image_xywh(
    boxes_xyxy: np.ndarray, scores: np.ndarray, image_hw: tuple[int, int], scale: float = 1.0, max_detections: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Map xyxy boxes from model input pixels back to the image (`/ scale`), clip, drop empty, sort, to COCO xywh."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4) / scale
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    h, w = image_hw
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    valid = (xywh[:, 2] > 0) & (xywh[:, 3] > 0) & np.isfinite(xywh).all(axis=1)
    xywh, scores = xywh[valid], scores[valid]
    order = np.argsort(-scores, kind="stable")[:max_detections]
    return xywh[order].astype(np.float32).reshape(-1, 4), scores[order].astype(np.float32)


def empty_result() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------------------------


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

    def __call__(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise DetectorError(f"detector {self.name}: pass a list of images, not one image")
        images = list(images)
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                got = f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}".strip()
                raise DetectorError(f"detector {self.name}: image {i} must be an HxWx3 uint8 RGB array, got {got}")
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise DetectorError(f"detector {self.name}: image {i} is empty ({image.shape})")
        if not images:
            return []
        return self.detect(images)

    def detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, score_threshold={self.score_threshold}, "
                f"device={self.device!r})")


class YoloxDetector(Detector):
    """YOLOX raw-head ONNX export (fixed batch 1): letterbox, decode grids, obj * cls, NMS."""

    def __init__(self, session: Any, name: str, score_threshold: float, device: str, *, nms_iou: float = 0.45,
                 person_class: int = 0, max_detections: int = 100):
        super().__init__(name, score_threshold, device, max_detections)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.input_hw = tuple(int(d) for d in session.get_inputs()[0].shape[2:])
        self.grids, self.strides = yolox_grids(self.input_hw)
        self.nms_iou = float(nms_iou)
        self.person_class = int(person_class)

    def detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        results = []
        for image in images:
            canvas, scale = letterbox(image[:, :, ::-1], self.input_hw)
            blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32)
            raw = self.session.run(None, {self.input_name: blob})[0][0]
            scores = raw[:, 4] * raw[:, 5 + self.person_class]
            candidates = np.flatnonzero(scores > self.score_threshold)
            if candidates.size == 0:
                results.append(empty_result())
                continue
            boxes = decode_yolox(raw[candidates, :4], self.grids[candidates], self.strides[candidates])
            keep = nms(boxes, scores[candidates], self.nms_iou)
            results.append(boxes_to_image_xywh(boxes[keep], scores[candidates][keep], image.shape[:2], scale,
                                               self.max_detections))
        return results


class RTMDetDetector(Detector):
    """RTMDet mmdeploy ONNX export (dynamic batch, NMS inside): letterbox + normalise, batched session calls."""

    def __init__(self, session: Any, name: str, score_threshold: float, device: str, *, input_size: Any = 640,
                 batch_size: int = 8, max_detections: int = 100):
        super().__init__(name, score_threshold, device, max_detections)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.input_hw = input_hw(input_size, name)
        if self.input_hw[0] % 32 or self.input_hw[1] % 32:
            raise DetectorError(f"detector {name!r}: input_size {self.input_hw} must be multiples of 32 for RTMDet")
        self.batch_size = positive_int(batch_size, "batch_size", name)

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        canvas, scale = letterbox(image[:, :, ::-1], self.input_hw)
        blob = (canvas.astype(np.float32) - RTMDET_MEAN) / RTMDET_STD
        return blob.transpose(2, 0, 1), scale

    def detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            blobs, scales = zip(*(self.preprocess(image) for image in chunk))
            dets, labels = self.session.run(None, {self.input_name: np.ascontiguousarray(np.stack(blobs))})
            for image, scale, det, label in zip(chunk, scales, dets, labels):
                keep = (label >= 0) & (det[:, 4] > 0) & (det[:, 4] > self.score_threshold)
                results.append(boxes_to_image_xywh(det[keep, :4], det[keep, 4], image.shape[:2], scale,
                                                   self.max_detections))
        return results


class HFDetector(Detector):
    """transformers object-detection model: processor -> model -> post_process_object_detection, "person" kept."""

    def __init__(self, model: Any, processor: Any, person_ids: set[int], name: str, score_threshold: float,
                 device: str, *, batch_size: int = 8, max_detections: int = 100):
        super().__init__(name, score_threshold, device, max_detections)
        self.model, self.processor, self.person_ids = model, processor, sorted(person_ids)
        self.batch_size = positive_int(batch_size, "batch_size", name)

    def detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        import torch

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


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


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


def default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def onnx_session(path: Path, ref: str, device: str, num_threads: Any) -> tuple[Any, str]:
    """Open an onnxruntime session on CUDA when asked for and available, else on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DetectorError(
            f"detector {ref!r}: onnxruntime is not installed; pip install 'vitpose-batch[onnx]'"
        ) from None
    threads = default_threads() if num_threads is None else positive_int(num_threads, "num_threads", ref)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    providers: list[Any] = ["CPUExecutionProvider"]
    used = "cpu"
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
            used = f"cuda:{index}"
        else:
            warnings.warn(f"detector {ref!r}: onnxruntime has no CUDAExecutionProvider here; running on the CPU",
                          RuntimeWarning, stacklevel=4)
    elif device != "cpu":
        raise DetectorError(f"detector {ref!r}: unknown device {device!r} (use 'cpu' or 'cuda[:N]')")
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - protobuf, truncated, unsupported op: one answer to the user
        raise DetectorError(f"detector {ref!r}: cannot be read as an ONNX model ({one_line(exc)})") from None
    return session, used


def onnx_layout(session: Any) -> str:
    """'yolox', 'rtmdet' or a description of what the file's inputs/outputs look like."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    in_shapes = [list(i.shape) for i in inputs]
    if len(inputs) == 1 and len(in_shapes[0]) == 4:
        shape = in_shapes[0]
        names = {o.name: list(o.shape) for o in outputs}
        if set(names) == {"dets", "labels"} and len(names["dets"]) == 3 and len(names["labels"]) == 2:
            if names["dets"][2] in (5, None) or isinstance(names["dets"][2], str):
                return "rtmdet"
        fixed = all(isinstance(d, int) for d in shape)
        if fixed and shape[0] == 1 and shape[1] == 3 and len(outputs) == 1:
            out = list(outputs[0].shape)
            anchors = sum((shape[2] // s) * (shape[3] // s) for s in YOLOX_STRIDES)
            if len(out) == 3 and out[0] == 1 and out[1] == anchors and isinstance(out[2], int) and out[2] >= 6:
                return "yolox"
    described = ", ".join(f"{i.name} {list(i.shape)}" for i in inputs)
    described_out = ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)
    return f"inputs [{described}] -> outputs [{described_out}]"


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
        return YoloxDetector(session, f"yolox:{path.name}", threshold, used, nms_iou=options.get("nms_iou", 0.45),
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


def load_hf(folder: Path, ref: str, device: str, score_threshold: float | None, options: dict) -> Detector:
    check_options(options, HF_OPTIONS, "transformers", ref)
    if not (folder / "config.json").is_file():
        raise DetectorError(f"detector {ref!r}: folder has no config.json (expected a transformers model folder)")
    try:
        import torch
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
