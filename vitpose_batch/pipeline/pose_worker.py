"""The pose stage: a Ray actor that loads the detector and ViTPose once, then turns batches of encoded images
into rows.

Besides the prediction columns each output batch carries diagnostics for the driver (stripped before rows are
written): `_dropped` (the given boxes left out, per image: reason and box in full-image pixels; see
vitpose_core.estimator.box_problems), `_retried` (the batch failed whole and was retried
image by image) and `_notes` (warnings raised in the actor, on the batch's first row). The driver reports each note
once, so warnings reach the user without Ray's worker log stream.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

import vitpose_core as vc
from vitpose_batch.pipeline.diagnostics import DROPPED_TYPE
from vitpose_batch.pipeline.image_decoding import (
    Decoded,
    batch_items,
    boxes_to_full,
    decode_batch,
    redecode,
    reduction_for,
    to_full,
    to_reduced,
)
from vitpose_batch.pipeline.nvjpeg import DeviceJpeg
from vitpose_batch.schemas.predictions import make_table, persons_column
from vitpose_core.estimator import box_problems
from vitpose_core.stage_clock import StageClock, timed

log = logging.getLogger(__name__)


@dataclass
class Labelled:
    """What `PoseWorker.label` made of a batch's items: per item its result (None: error or no image), error and
    retryable flag; whether the batch was retried image by image; the warnings raised meanwhile."""

    results: list[dict | None]
    errors: list[str | None]
    retryable: list[bool | None]
    retried: bool
    notes: list[str]


class PoseWorker:
    """Callable class for `map_batches(..., compute=ActorPoolStrategy)`: ITEM or ENCODED rows -> PREDICTION rows.

    The actor decodes its own batches: a thread pool of the CPUs Ray granted decodes on the CPU, and on a GPU the
    JPEGs decode into device memory (vitpose_batch.pipeline.nvjpeg), where crops, the model and heatmap decoding stay. It is
    thread-safe, so an actor may run two batches at once: one's host work (decoding other formats, building rows)
    then overlaps the other's GPU work.
    """

    def __init__(self, model: str, detector: str | None, device: str, dtype: str | None, flip_test: bool,
                 dataset_index: int | None, crops_per_forward: int | None, threads: int | None,
                 boxes=None, compile: bool = False, device_jpeg: bool = True, clock: StageClock | None = None,
                 report_dropped: bool | None = None) -> None:
        """boxes: a vitpose_batch.schemas.box_files.BoxIndex (--boxes) or None (run the detector); threads: the CPUs Ray granted,
        for torch, onnxruntime and decoding; device_jpeg: decode JPEGs on a CUDA device when torchvision can;
        clock: times each call's stages ("call" around "boxes", "decode", the estimator's "crop", "model" and
        "heatmaps", and "rows"; benchmarks/hot_path.py reads it), None: untimed; report_dropped: name the given
        boxes left out in `Decoded.dropped` (default: when the boxes come from a boxes file)."""
        import torch


        if threads:
            torch.set_num_threads(threads)
        self.dataset_index = dataset_index
        detector_options = {"num_threads": threads} if threads and detector and detector.lower().endswith(".onnx") \
            else {}
        self.notes: list[str] = []  # warnings raised in this actor, sent with the next batch
        self.lock = threading.Lock()
        # One process-wide hook, not catch_warnings per call: that swaps a global and is not thread-safe.
        warnings.simplefilter("always")
        warnings.showwarning = self.note_warning
        self.estimator = vc.PoseEstimator(
            vc.load_pose_model(model, device=device, dtype=dtype),
            detector=vc.load_detector(detector, device=device, **detector_options) if detector else None,
            flip_test=flip_test, device=device, batch_size=crops_per_forward, compile=compile, clock=clock,
        )
        self.clock = clock
        self.boxes = boxes
        self.report_dropped = boxes is not None if report_dropped is None else report_dropped
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads or 1), thread_name_prefix="decode")
        self.jpeg = DeviceJpeg.for_device(self.estimator.device) if device_jpeg else None
        fault = os.environ.get("VITPOSE_TEST_KILL_AFTER")  # test-only fault hook: die once after N batches
        self.kill_after = int(fault) if fault else None
        self.batches = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        with timed(self.clock, "call"):
            return self.predict(batch)

    def predict(self, batch: pa.Table) -> pa.Table:
        self.maybe_die()
        with timed(self.clock, "boxes"):
            items = batch_items(batch, self.boxes)
        with timed(self.clock, "decode", device_work=self.jpeg is not None):
            decode_batch(items, batch.column("data").to_pylist(), pool=self.pool, jpeg=self.jpeg)
        labelled = self.label(items)
        with timed(self.clock, "rows"):
            return self.rows(items, labelled)

    def label(self, items: list[Decoded]) -> Labelled:
        """Persons of every decoded item (boxes given, or the detector's); a batch that fails whole is retried image
        by image, so only the image that broke it gets the error."""
        results: list[dict | None] = [None for _ in items]
        errors = [item.error for item in items]
        retryable = [item.retryable for item in items]
        good = [i for i, item in enumerate(items) if item.error is None]
        retried = False
        try:
            self.estimate(items, good, results)
        except Exception as exc:  # noqa: BLE001 - isolate the image that broke the batch, keep the others
            retried = True
            self.note_warning(f"a batch failed ({type(exc).__name__}: {str(exc)[:200]}); retried image by image")
            for i in good:
                try:
                    self.estimate(items, [i], results)
                except Exception as single:  # noqa: BLE001
                    errors[i] = f"pose estimation failed: {type(single).__name__}: {single}"
                    retryable[i] = True  # out of memory, a device fault: may pass on a re-run
        with self.lock:
            notes, self.notes = list(dict.fromkeys(self.notes)), []
        results = [r if e is None else None for r, e in zip(results, errors)]
        return Labelled(results, errors, retryable, retried, notes)

    @staticmethod
    def prediction_table(items: list[Decoded], labelled: Labelled) -> pa.Table:
        """The items' PREDICTION_SCHEMA rows."""
        return make_table(
            [item.image_uri for item in items], [item.image_id for item in items],
            [item.width for item in items], [item.height for item in items], persons_column(labelled.results),
            labelled.errors, labelled.retryable,
        )

    def rows(self, items: list[Decoded], labelled: Labelled) -> pa.Table:
        """The batch's PREDICTION rows, with the driver's diagnostics columns."""
        table = self.prediction_table(items, labelled)
        dropped = [item.dropped if e is None else [] for item, e in zip(items, labelled.errors)]
        n = len(items)
        return (table.append_column("_dropped", pa.array(dropped, DROPPED_TYPE))
                .append_column("_retried", pa.array([labelled.retried] + [False] * (n - 1) if n else [], pa.bool_()))
                .append_column("_notes", pa.array(([labelled.notes] + [[] for _ in items[1:]]) if n else [],
                                                  pa.list_(pa.string()))))

    def estimate(self, items: list[Decoded], indices: list[int], results: list[dict | None]) -> None:
        if not indices:
            return
        chosen = [items[i] for i in indices]
        if any(item.boxes is None for item in chosen):
            self.detect_reduced(chosen)
        given = all(item.boxes is not None for item in chosen)
        boxes = scores = None
        if given:
            boxes, scores = [], []
            for item in chosen:
                reduced = to_reduced(item.boxes, item.reduction)  # in the pixels decoded
                usable = self.usable(item, reduced)
                boxes.append(reduced[usable])
                scores.append(item.box_scores[usable])
        estimated = self.estimator([item.image for item in chosen], boxes=boxes, box_scores=scores,
                                   dataset_index=self.dataset_index)
        for i, item, result in zip(indices, chosen, estimated):
            if item.reduction > 1:  # decoded at 1/f: keypoints and boxes back in full-image pixels
                result["keypoints"] = to_full(result["keypoints"], item.reduction)
                result["boxes"] = boxes_to_full(result["boxes"], item.reduction)
            results[i] = result

    def usable(self, item: Decoded, reduced: np.ndarray) -> np.ndarray:
        """Mask of `item`'s boxes (`reduced`: them in the decoded image's pixels) that can be cropped; the others,
        with their reasons, go to `item.dropped` when they came from the boxes file (a detector's own boxes are not
        "given": none is reported)."""
        problems = box_problems(reduced, tuple(item.image.shape[:2]))
        if self.report_dropped:
            item.dropped = [{"reason": p, "bbox": box.tolist()} for p, box in zip(problems, item.boxes) if p]
        return np.array([p is None for p in problems], dtype=bool)

    def detect_reduced(self, chosen: list[Decoded]) -> None:
        """Detector runs where some photo was decoded reduced: detect on what was decoded, and where a person is too
        small for those pixels, decode that photo again as large as its crops need. The boxes (full-image pixels)
        land in the items, so the estimator crops without detecting again."""
        if all(item.reduction == 1 for item in chosen):
            return  # nothing reduced: the estimator detects as it always does
        for item, (found, scores) in zip(chosen, self.estimator.detector([item.image for item in chosen])):
            item.boxes, item.box_scores = boxes_to_full(found, item.reduction), scores
            needed = reduction_for(item.boxes)
            if item.reduction > needed:
                redecode(item, needed)

    def note_warning(self, message, *_args, **_kwargs) -> None:
        """Keep a warning (or a note of ours) for the driver, which logs each distinct one once."""
        with self.lock:
            self.notes.append(str(message))

    def maybe_die(self) -> None:
        if self.kill_after is None:
            return
        marker = os.environ.get("VITPOSE_TEST_KILL_MARKER", "")
        if self.batches >= self.kill_after and marker and not os.path.exists(marker):
            open(marker, "w").close()  # only the first actor to get here dies; the restarted one carries on
            os._exit(1)
        self.batches += 1
