"""YOLOX raw-head ONNX exports: letterbox, decode grids, obj * cls[person], greedy NMS.

The file: one input [1, 3, H, W] (batch 1 declared), one output [1, N, 5 + C] where N is the number of stride 8/16/32
grid cells of H x W. BGR 0-255 floats, letterbox with 114 at bottom/right, no normalisation. Columns: (cx, cy, w, h)
grid offsets, objectness, C class scores; objectness and class scores come out of the exported graph already
sigmoid-ed (only the box columns are raw). Decoded here: xy = (out + grid) * stride, wh = exp(out) * stride,
score = obj * cls[person_class], then greedy NMS (IoU `nms_iou`, default 0.45). Default score threshold 0.1: the
coco-val-4 box AP of 0.05 with up to a third fewer boxes per image (see `base.DEFAULT_THRESHOLDS`).

The declared batch 1 is usually not baked into the graph: at load, with the `onnx` package (the `[onnx]` extra), dim 0
is renamed "batch" and the session reopened (`onnx_runtime.yolox_batched_session`); a probe with 2 zero images must
give twice the batch-1 output. Without `onnx`, or if the probe fails, the detector silently keeps the file's batch-1
session and `detector.batch_size` is 1. On the CPU the batched outputs are bit-identical to batch-1 calls.
The input size is fixed by the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .letterbox import boxes_to_image_xywh, letterbox, letterbox_torch
from .nms import nms
from .onnx_runtime import ONNX_OPTIONS, YOLOX_STRIDES, OnnxDetector, run_bound

YOLOX_OPTIONS = ONNX_OPTIONS | {"batch_size", "nms_iou", "person_class"}


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
