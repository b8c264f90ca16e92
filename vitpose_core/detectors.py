"""Person detectors for the top-down pipeline: YOLOX / RTMDet ONNX files and transformers object-detection models.

    detector = load_detector("../shared/models/yolox_nano.onnx")          # or rtmdet_nano_person.onnx, an HF folder
    [(boxes, scores), ...] = detector([rgb_uint8_image, ...])             # boxes: (n, 4) float32 COCO xywh
    detector([rgb_uint8_tensor_on_the_gpu, ...])                          # torch tensors too, left on their device

`load_detector(ref, device="cpu", score_threshold=None, **options)` accepts

* an ONNX file, told apart by its inputs/outputs (never by its file name):
  - YOLOX (raw head export): one input [1, 3, H, W] (batch 1 declared), one output [1, N, 5 + C] where N is the number
    of stride 8/16/32 grid cells of H x W. BGR 0-255 floats, letterbox with 114 at bottom/right, no normalisation.
    Columns: (cx, cy, w, h) grid offsets, objectness, C class scores; objectness and class scores come out of the
    exported graph already sigmoid-ed (only the box columns are raw). Decoded here: xy = (out + grid) * stride,
    wh = exp(out) * stride, score = obj * cls[person], then greedy NMS (IoU 0.45, option `nms_iou`).
    The declared batch 1 is usually not baked into the graph: at load, with the `onnx` package (the `[onnx]` extra),
    dim 0 of the input and outputs is renamed "batch" (stale `value_info` shapes dropped) and the session opened
    from those bytes; a probe with 2 zero images must give twice the batch-1 output. Without `onnx`, or if the
    probe fails, the detector silently keeps the file's batch-1 session and `detector.batch_size` is 1. On the CPU
    the batched outputs are bit-identical to batch-1 calls (tested on COCO images).
  - RTMDet (mmdeploy export, NMS inside): input [B, 3, H, W] with dynamic B/H/W, outputs `dets` [B, N, 5]
    (x1, y1, x2, y2, score in input pixels) and `labels` [B, N]. BGR, letterbox with 114 at bottom/right, then
    (x - mean) / std. H and W must be multiples of 32 (other sizes fail inside the graph). Rows past the last
    detection are padding: score 0 with label -1 (or label 0 in a single-image call that found nothing). The graph
    already drops scores below about 0.05 and keeps at most 100 boxes per image.
* a transformers object-detection model (AutoModelForObjectDetection + AutoImageProcessor): a local folder with
  config.json, or a hub id ("PekingU/rtdetr_r50vd_coco_o365") fetched with huggingface_hub when the hub can be reached
  (a cached copy also works offline). Only the classes whose `config.id2label` name is "person" are kept.

Options (unknown ones are refused): `num_threads` (onnxruntime intra-op threads; default: the CPU cores this process
may use, at most 8; pass 1 when several detectors share a machine; the pose job passes what Ray granted),
`batch_size` (images per model call, default 8; YOLOX falls back to 1 as said above), `input_size` (int or (h, w);
RTMDet default 640, multiple of 32; YOLOX is fixed by its file), `nms_iou` (YOLOX, default 0.45), `max_detections`
(per image, default 100), `person_class` (ONNX YOLOX class index, default 0). `num_threads` applies to the one
session both paths use.

A detector is called with a list of HxWx3 uint8 RGB images, numpy arrays or torch tensors on any device (anything
else is refused with a one-line `DetectorError`), and returns per image `(boxes, scores)`: boxes (n, 4) float32 COCO
xywh in image pixels, clipped to the image (boxes left with no area are dropped), scores (n,) float32, persons only,
sorted by score descending; (0, 4) / (0,) arrays when there is none. ONNX detectors letterbox every image of a call
to the model's input size and run them in chunks of `batch_size` per session call. onnxruntime uses
CUDAExecutionProvider when `device` starts with "cuda" and the provider is installed, otherwise the CPU (with a
warning if CUDA was asked for); `detector.device` says which ("cuda:N" or "cpu").

Which path runs (ONNX detectors, chosen per call; both give the same boxes, see the tests):

* numpy path: numpy images on a CPU session. cv2 letterbox, `session.run`, numpy decoding / NMS.
* torch path: any call with a torch tensor in it, and every call on a CUDA session (numpy images are then uploaded
  once, as uint8). Everything happens on the session's device ("cuda:N", else "cpu"): letterbox (cv2's fixed-point
  INTER_LINEAR reproduced in integer torch ops, so the pixels equal the numpy path's), RGB -> BGR, RTMDet
  normalisation; onnxruntime reads the batch in place and YOLOX writes its output into a preallocated torch tensor
  (IO binding). Then YOLOX scores and thresholds on the device and only the candidates go to the host for the
  numpy decoding / NMS; RTMDet's outputs, data-dependent in size, are its final boxes and come to the host.
  On CUDA only those cross to the host (this CUDA side has not run on a GPU yet: none was at hand). torch's own
  CPU work follows torch's thread setting (the pose job sets it to what Ray granted, like `num_threads`).
* transformers detectors hand tensors to their image processor as host arrays.

ONNX detectors run in fp32: an fp16 conversion could only be judged by its box AP on a GPU, and none was at hand.

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

Speed on a 2-core CPU (onnxruntime 1.32, 2 intra-op threads, 32 mini-train images, pre/post-processing included),
from `benchmarks/bench_detectors.py --timing-iters 5`, which alternates the configurations round by round and
prints the median round.
The machine is shared: whole runs vary 2-5x with its load (an earlier, busier one gave YOLOX ~59 and RTMDet ~153
ms/image), so compare rows of one run only. Two quiet runs, ms/image:

    detector              one image per call   batch_size 8 (numpy images)   batch_size 8, torch tensors (CPU)
    YOLOX-nano 416            11.3 / 12.2              11.3 / 11.7                     19.5 / 18.9
    RTMDet-nano 640           30.5 / 29.6              36.4 / 32.4                     35.2 / 36.3

On the CPU batching buys little (YOLOX at most ~5%); what it saves, one kernel launch sequence per 8 images, is a
GPU matter that could not be measured here. The torch path costs ~7 ms/image more on the CPU (integer torch ops
vs cv2's SIMD resize), hence numpy images keep the numpy path on a CPU session.

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
import torch

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
    "letterbox_torch",
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
YOLOX_OPTIONS = ONNX_OPTIONS | {"batch_size", "nms_iou", "person_class"}
RTMDET_OPTIONS = ONNX_OPTIONS | {"batch_size", "input_size"}
HF_OPTIONS = COMMON_OPTIONS | {"batch_size"}


class DetectorError(ValueError):
    """A detector ref that cannot be loaded (or a bad call); the message is one line naming the ref."""


# ---------------------------------------------------------------------------------------------------------------
# Pure numpy maths
# ---------------------------------------------------------------------------------------------------------------


def letterbox_shape(image_hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, float]:
    """(new_h, new_w, scale) of an image of `image_hw` = (h, w) letterboxed into `size` = (height, width)."""
    (h, w), (out_h, out_w) = image_hw, size
    scale = min(out_h / h, out_w / w)
    return min(out_h, max(1, int(round(h * scale)))), min(out_w, max(1, int(round(w * scale)))), scale


def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: int = PAD_VALUE) -> tuple[np.ndarray, float]:
    """Resize `image` (HxWxC) keeping its aspect ratio to fit `size` = (height, width); pad bottom/right.

    Returns the (height, width, C) canvas and the scale: a point (x, y) of the image lands on (x * scale, y * scale),
    so boxes found on the canvas map back with `boxes / scale`.
    """
    h, w = image.shape[:2]
    new_h, new_w, scale = letterbox_shape((h, w), size)
    canvas = np.full((*size, *image.shape[2:]), pad_value, dtype=image.dtype)
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


# ---------------------------------------------------------------------------------------------------------------
# Device-side (torch) pre-processing and onnxruntime IO binding
# ---------------------------------------------------------------------------------------------------------------


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


def linear_taps(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, ...]:
    """cv2 INTER_LINEAR taps along one axis of `src` -> `dst` pixels: source indices i0, i1 (dst,) and weights w0, w1
    (dst,) in cv2's 11-bit fixed point (w0 + w1 = 2048). Half-pixel centres; like cv2, only the x axis (`clamp`)
    pins positions outside the image to the border pixel, the y axis clips the row indices instead.
    """
    pos = ((np.arange(dst) + 0.5) * (1.0 / (dst / src)) - 0.5).astype(np.float32)  # cv2's float maths
    first = np.floor(pos).astype(np.int64)
    frac = pos - first.astype(np.float32)
    if clamp:
        frac[(first < 0) | (first >= src - 1)] = 0
        first = np.clip(first, 0, src - 1)
    w1 = np.rint(frac * np.float32(2048)).astype(np.int32)
    w0 = np.rint((np.float32(1) - frac) * np.float32(2048)).astype(np.int32)
    return np.clip(first, 0, src - 1), np.clip(first + 1, 0, src - 1), w0, w1


def resize_like_cv2(image: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """cv2.resize(image, (new_w, new_h), INTER_LINEAR) of an HxWxC uint8 tensor, in integer torch ops on its device.

    Reproduces cv2's fixed-point arithmetic (its SIMD path) so that the torch path feeds the model the same pixels as
    the numpy path: a float bilinear resize differs by 1 on ~8% of pixels, enough to move YOLOX scores by 7e-3.
    """
    h, w = image.shape[:2]
    x0, x1, a0, a1 = (torch.from_numpy(t).to(image.device) for t in linear_taps(w, new_w, clamp=True))
    y0, y1, b0, b1 = (torch.from_numpy(t).to(image.device) for t in linear_taps(h, new_h, clamp=False))
    rows = image[torch.cat([y0, y1])]  # the two source rows of every output row, (2 * new_h, W, C)
    # horizontal pass, kept >> 4 as cv2 does before the vertical one; in place: fewer, smaller allocations
    across = (rows[:, x0].int() * a0[:, None]).add_(rows[:, x1].int() * a1[:, None]).bitwise_right_shift_(4)
    top = across[:new_h].mul_(b0[:, None, None]).bitwise_right_shift_(16)
    bottom = across[new_h:].mul_(b1[:, None, None]).bitwise_right_shift_(16)
    return top.add_(bottom).add_(2).bitwise_right_shift_(2).clamp_(0, 255).to(torch.uint8)


def letterbox_torch(images: Sequence[np.ndarray | torch.Tensor], size: tuple[int, int],
                    device: torch.device) -> tuple[torch.Tensor, list[float]]:
    """`letterbox` of HxWx3 uint8 RGB images (numpy or torch, any device) on `device`, as one BGR float batch.

    Returns a (B, 3, height, width) float32 tensor on `device` holding the same pixel values as the numpy path's
    canvases, and each image's scale.
    """
    blob = torch.full((len(images), 3, *size), float(PAD_VALUE), dtype=torch.float32, device=device)
    scales = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        image = image.to(device)  # the one copy, still uint8 (a no-op when it is already there)
        new_h, new_w, scale = letterbox_shape(image.shape[:2], size)
        if (new_h, new_w) != tuple(image.shape[:2]):
            image = resize_like_cv2(image, new_h, new_w)
        blob[i, :, :new_h, :new_w] = image.permute(2, 0, 1).flip(0)  # RGB -> BGR
        scales.append(scale)
    return blob, scales


def run_bound(session: Any, input_name: str, blob: torch.Tensor,
              outputs: dict[str, torch.Tensor | None]) -> dict[str, Any]:
    """One onnxruntime call reading the float32 torch tensor `blob` in place (CPU or CUDA) through IO binding.

    `outputs` maps each output name to a preallocated float32 tensor on blob's device, written in place, or to None
    for an output whose size is data-dependent: onnxruntime then allocates it on the host and it comes back as a
    numpy array. Returns {name: tensor or numpy array}.
    """
    blob = blob.contiguous()
    cuda = blob.device.type == "cuda"
    where = ("cuda", blob.device.index or 0) if cuda else ("cpu", 0)
    binding = session.io_binding()
    binding.bind_input(input_name, *where, np.float32, list(blob.shape), blob.data_ptr())
    for name, tensor in outputs.items():
        if tensor is None:
            binding.bind_output(name, "cpu")
        else:
            binding.bind_output(name, *where, np.float32, list(tensor.shape), tensor.data_ptr())
    if cuda:
        torch.cuda.synchronize(blob.device)  # torch wrote `blob` on its own stream, not on onnxruntime's
    session.run_with_iobinding(binding)  # returns once the outputs are written (onnxruntime syncs its stream)
    values = binding.get_outputs()
    return {name: values[i].numpy() if tensor is None else tensor for i, (name, tensor) in enumerate(outputs.items())}


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


class OnnxDetector(Detector):
    """An onnxruntime session run on chunks of `batch_size` images, by the numpy or the torch (device) path."""

    def __init__(self, session: Any, name: str, score_threshold: float, device: str, *, batch_size: int = 8,
                 max_detections: int = 100):
        super().__init__(name, score_threshold, device, max_detections)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [output.name for output in session.get_outputs()]
        self.batch_size = positive_int(batch_size, "batch_size", name)
        self.torch_device = torch.device(device)

    def detect(self, images: list[np.ndarray | torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        # Tensors stay on their device; on a CUDA session numpy images are uploaded once, as uint8, and
        # pre-processed there too. On the CPU numpy images take the numpy path (cv2's resize is the faster one).
        on_torch = self.torch_device.type == "cuda" or any(isinstance(image, torch.Tensor) for image in images)
        results = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start:start + self.batch_size]
                results += self.detect_torch(chunk) if on_torch else self.detect_numpy(chunk)
        return results

    def detect_numpy(self, chunk: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def detect_torch(self, chunk: list[np.ndarray | torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError


class YoloxDetector(OnnxDetector):
    """YOLOX raw-head ONNX export: letterbox, decode grids, obj * cls, NMS. Batched when the batch dim is dynamic."""

    def __init__(self, session: Any, name: str, score_threshold: float, device: str, *, batch_size: int = 8,
                 nms_iou: float = 0.45, person_class: int = 0, max_detections: int = 100):
        super().__init__(session, name, score_threshold, device, batch_size=batch_size, max_detections=max_detections)
        self.input_hw = tuple(int(d) for d in session.get_inputs()[0].shape[2:])
        self.grids, self.strides = yolox_grids(self.input_hw)
        self.columns = int(session.get_outputs()[0].shape[2])
        self.nms_iou = float(nms_iou)
        self.person_class = int(person_class)

    def finish(self, raw_boxes: np.ndarray, anchors: np.ndarray, scores: np.ndarray, image_hw: tuple[int, int],
               scale: float) -> tuple[np.ndarray, np.ndarray]:
        """One image's candidates (raw box columns (k, 4), anchor indices (k,), scores (k,)) -> decoded, NMS-ed."""
        boxes = decode_yolox(raw_boxes, self.grids[anchors], self.strides[anchors])
        keep = nms(boxes, scores, self.nms_iou)
        return boxes_to_image_xywh(boxes[keep], scores[keep], image_hw, scale, self.max_detections)

    def detect_numpy(self, chunk: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        canvases, scales = zip(*(letterbox(image[:, :, ::-1], self.input_hw) for image in chunk))
        blob = np.ascontiguousarray(np.stack(canvases).transpose(0, 3, 1, 2), dtype=np.float32)
        raw = self.session.run(None, {self.input_name: blob})[0]
        results = []
        for image, scale, out in zip(chunk, scales, raw):
            scores = out[:, 4] * out[:, 5 + self.person_class]
            anchors = np.flatnonzero(scores > self.score_threshold)
            results.append(self.finish(out[anchors, :4], anchors, scores[anchors], image.shape[:2], scale))
        return results

    def detect_torch(self, chunk: list[np.ndarray | torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        blob, scales = letterbox_torch(chunk, self.input_hw, self.torch_device)
        raw = torch.empty((len(chunk), len(self.grids), self.columns), dtype=torch.float32, device=self.torch_device)
        run_bound(self.session, self.input_name, blob, {self.output_names[0]: raw})
        scores = raw[..., 4] * raw[..., 5 + self.person_class]
        # Only the candidates above the threshold (a few dozen of 3549 anchors) leave the device.
        owner, anchors = (scores > self.score_threshold).nonzero(as_tuple=True)
        found = torch.cat([raw[owner, anchors, :4], scores[owner, anchors, None]], dim=1).cpu().numpy()
        owner, anchors = owner.cpu().numpy(), anchors.cpu().numpy()
        results = []
        for i, (image, scale) in enumerate(zip(chunk, scales)):
            mine = owner == i
            results.append(self.finish(found[mine, :4], anchors[mine], found[mine, 4], tuple(image.shape[:2]), scale))
        return results


class RTMDetDetector(OnnxDetector):
    """RTMDet mmdeploy ONNX export (dynamic batch, NMS inside): letterbox + normalise, batched session calls."""

    def __init__(self, session: Any, name: str, score_threshold: float, device: str, *, input_size: Any = 640,
                 batch_size: int = 8, max_detections: int = 100):
        super().__init__(session, name, score_threshold, device, batch_size=batch_size, max_detections=max_detections)
        self.input_hw = input_hw(input_size, name)
        if self.input_hw[0] % 32 or self.input_hw[1] % 32:
            raise DetectorError(f"detector {name!r}: input_size {self.input_hw} must be multiples of 32 for RTMDet")
        self.mean = torch.from_numpy(RTMDET_MEAN).to(self.torch_device)[:, None, None]
        self.std = torch.from_numpy(RTMDET_STD).to(self.torch_device)[:, None, None]

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        canvas, scale = letterbox(image[:, :, ::-1], self.input_hw)
        blob = (canvas.astype(np.float32) - RTMDET_MEAN) / RTMDET_STD
        return blob.transpose(2, 0, 1), scale

    def finish(self, chunk: list, scales: Sequence[float], outputs: dict[str, np.ndarray]) -> list:
        results = []
        for image, scale, det, label in zip(chunk, scales, outputs["dets"], outputs["labels"]):
            keep = (label >= 0) & (det[:, 4] > 0) & (det[:, 4] > self.score_threshold)
            results.append(boxes_to_image_xywh(det[keep, :4], det[keep, 4], tuple(image.shape[:2]), scale,
                                               self.max_detections))
        return results

    def detect_numpy(self, chunk: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        blobs, scales = zip(*(self.preprocess(image) for image in chunk))
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(np.stack(blobs))})
        return self.finish(chunk, scales, dict(zip(self.output_names, outputs)))

    def detect_torch(self, chunk: list[np.ndarray | torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        blob, scales = letterbox_torch(chunk, self.input_hw, self.torch_device)
        blob = (blob - self.mean) / self.std
        # dets / labels hold the final boxes (at most 100 an image, how many is data-dependent): to the host.
        return self.finish(chunk, scales, run_bound(self.session, self.input_name, blob,
                                                    dict.fromkeys(self.output_names)))


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


def onnx_session(model: Path | bytes, ref: str, device: str, num_threads: Any) -> tuple[Any, str]:
    """Open an onnxruntime session of a file (or serialized model) on CUDA when asked for and available, else CPU."""
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
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=opts,
                                       providers=providers)
    except Exception as exc:  # noqa: BLE001 - protobuf, truncated, unsupported op: one answer to the user
        raise DetectorError(f"detector {ref!r}: cannot be read as an ONNX model ({one_line(exc)})") from None
    if used != "cpu" and "CUDAExecutionProvider" not in session.get_providers():
        # The provider is installed but could not start (CUDA / cuDNN libraries): the session runs on the CPU, and
        # the torch path must feed it host memory.
        warnings.warn(f"detector {ref!r}: onnxruntime's CUDAExecutionProvider did not start; running on the CPU",
                      RuntimeWarning, stacklevel=4)
        used = "cpu"
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


def yolox_batched_session(path: Path, session: Any, ref: str, device: str, num_threads: Any) -> Any | None:
    """A session of the YOLOX file with a dynamic batch dimension, or None where that cannot be had.

    The raw-head export declares batch 1, but its graph usually holds no batch-1 constant: marking dim 0 of the
    input and outputs as "batch" (and dropping the stale inferred shapes in value_info) is then enough. A probe with
    a batch of 2 zeros must give twice the batch-1 session's output; without the `onnx` package, or with a graph
    that does not pass the probe, the caller keeps the batch-1 session (correct, one image per call).
    """
    try:
        import onnx

        model = onnx.load(str(path))
        for value in (model.graph.input[0], *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
        del model.graph.value_info[:]
        batched, _ = onnx_session(model.SerializeToString(), ref, device, num_threads)
        name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
        zeros = np.zeros((2, *shape[1:]), np.float32)
        two = batched.run(None, {batched.get_inputs()[0].name: zeros})[0]
        one = session.run(None, {name: zeros[:1]})[0]
        if two.shape == (2, *one.shape[1:]) and np.allclose(two, one, rtol=1e-4, atol=1e-4):
            return batched
    except Exception:  # noqa: BLE001 - no onnx package, an unreadable or batch-1-bound graph: stay at batch 1
        pass
    return None


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


def load_hf(folder: Path, ref: str, device: str, score_threshold: float | None, options: dict) -> Detector:
    check_options(options, HF_OPTIONS, "transformers", ref)
    if not (folder / "config.json").is_file():
        raise DetectorError(f"detector {ref!r}: folder has no config.json (expected a transformers model folder)")
    try:
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
