"""The pose stage: a Ray actor that loads the detector and ViTPose once, then turns decoded batches into rows.

Besides the prediction columns each output batch carries diagnostics for the driver (stripped before rows are
written): `_dropped_boxes` (unusable boxes left out, per image), `_retried` (the batch failed whole and was retried
image by image) and `_notes` (warnings raised in the actor, on the batch's first row). The driver reports each note
once, so warnings reach the user without Ray's worker log stream.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pyarrow as pa

from jobs.decode import decode_batch, pixels_of, to_full, to_reduced
from schemas.predictions import make_table, persons_column

log = logging.getLogger(__name__)


class PoseWorker:
    """Callable class for `map_batches(..., compute=ActorPoolStrategy)`: DECODED rows -> PREDICTION rows."""

    def __init__(self, model: str, detector: str | None, device: str, dtype: str | None, flip_test: bool,
                 dataset_index: int | None, crops_per_forward: int | None, threads: int | None,
                 decode: bool = False, boxes=None, compile: bool = False) -> None:
        """decode: batches arrive undecoded (ITEM rows) and are decoded here, with `boxes` (a BoxIndex) attached."""
        import torch

        import vitpose_core as vc

        if threads:
            torch.set_num_threads(threads)
        self.dataset_index = dataset_index
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.estimator = vc.PoseEstimator(
                vc.load_pose_model(model, device=device, dtype=dtype),
                detector=vc.load_detector(detector, device=device) if detector else None,
                flip_test=flip_test, device=device, batch_size=crops_per_forward, compile=compile,
            )
        self.notes = [str(w.message) for w in caught]  # sent with the next batch
        self.decode, self.boxes = decode, boxes
        fault = os.environ.get("VITPOSE_TEST_KILL_AFTER")  # test-only fault hook: die once after N batches
        self.kill_after = int(fault) if fault else None
        self.batches = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.maybe_die()
        if self.decode:
            batch = decode_batch(batch, self.boxes)
        rows = batch.to_pylist()
        results: list[dict | None] = [None for _ in rows]
        errors = [row["error"] for row in rows]
        retryable = [row["error_retryable"] for row in rows]
        good = [i for i, row in enumerate(rows) if row["error"] is None]
        retried = False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.estimate(rows, good, results)
            except Exception as exc:  # noqa: BLE001 - isolate the image that broke the batch, keep the others
                retried = True
                self.notes.append(f"a batch failed ({type(exc).__name__}: {str(exc)[:200]}); retried image by image")
                for i in good:
                    try:
                        self.estimate(rows, [i], results)
                    except Exception as single:  # noqa: BLE001
                        errors[i] = f"pose estimation failed: {type(single).__name__}: {single}"
                        retryable[i] = True  # out of memory, a device fault: may pass on a re-run
        self.notes += [str(w.message) for w in caught]
        results = [r if e is None else None for r, e in zip(results, errors)]
        table = make_table(
            [r["image_uri"] for r in rows], [r["image_id"] for r in rows],
            [r["width"] for r in rows], [r["height"] for r in rows], persons_column(results), errors, retryable,
        )
        given = [len(r["boxes"]) // 4 if r["boxes"] is not None and e is None else 0 for r, e in zip(rows, errors)]
        dropped = [max(0, n - (0 if r is None else len(r["boxes"]))) for n, r in zip(given, results)]
        notes = ([list(dict.fromkeys(self.notes))] + [[] for _ in rows[1:]]) if rows else []
        self.notes = []
        return (table.append_column("_dropped_boxes", pa.array(dropped, pa.int32()))
                .append_column("_retried", pa.array([retried] + [False] * (len(rows) - 1) if rows else [], pa.bool_()))
                .append_column("_notes", pa.array(notes, pa.list_(pa.string()))))

    def estimate(self, rows: list[dict], indices: list[int], results: list[dict | None]) -> None:
        if not indices:
            return
        reductions = [rows[i].get("reduction") or 1 for i in indices]
        images = [pixels_of(rows[i]["pixels"], rows[i]["width"], rows[i]["height"], f)
                  for i, f in zip(indices, reductions)]
        given = [rows[i]["boxes"] is not None for i in indices]
        boxes = [to_reduced(np.asarray(rows[i]["boxes"], np.float32), f) for i, f in zip(indices, reductions)] \
            if all(given) else None
        scores = [np.asarray(rows[i]["box_scores"], np.float32) for i in indices] if all(given) else None
        estimated = self.estimator(images, boxes=boxes, box_scores=scores, dataset_index=self.dataset_index)
        for i, f, result in zip(indices, reductions, estimated):
            if f > 1:  # decoded at 1/f: keypoints and boxes back in full-image pixels
                result["keypoints"] = to_full(result["keypoints"], f)
                full = result["boxes"].copy()
                full[:, :2], full[:, 2:] = to_full(full[:, :2], f), full[:, 2:] * f
                result["boxes"] = full
            results[i] = result

    def maybe_die(self) -> None:
        if self.kill_after is None:
            return
        marker = os.environ.get("VITPOSE_TEST_KILL_MARKER", "")
        if self.batches >= self.kill_after and marker and not os.path.exists(marker):
            open(marker, "w").close()  # only the first actor to get here dies; the restarted one carries on
            os._exit(1)
        self.batches += 1
