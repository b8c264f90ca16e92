"""`estimate_poses`: the pose stage for any Ray Dataset, its other columns passed through.

    ds = ray.data.read_parquet("s3://bucket/shards/")                      # image: struct<bytes, path>, caption, ...
    ds = vitpose_batch.estimate_poses(ds, image_column="image", model="vitpose-b.pth", detector="yolox_nano.onnx")
    # every column of ds, plus width, height, persons, error, error_retryable (vitpose_batch.schemas.predictions)

The image column may hold encoded bytes (binary), a `datasets`-style struct with `bytes` (and `path`), or decoded
HxWx3 uint8 arrays (`ray.data.read_images` gives them as a tensor column). An optional boxes column gives each row's
person boxes (a list of COCO xywh boxes, each [x, y, w, h] or [x, y, w, h, score] in image pixels, or a list of
{bbox, score}); without one the detector finds them. A bad image becomes that row's error; the stage never raises
on one. The actor pool is sized to the cluster exactly as annotate's (`job.plan_actors`).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa

from vitpose_batch.files.image_reader import column_bytes, column_kind
from vitpose_batch.output.datasets import STAGE_METADATA, stage_settings
from vitpose_batch.pipeline.actors import actor_pool, plan_actors
from vitpose_batch.pipeline.image_decoding import Decoded, decode_batch
from vitpose_batch.pipeline.pose_worker import PoseWorker
from vitpose_batch.schemas.predictions import PREDICTION_SCHEMA

log = logging.getLogger("vitpose_batch")

PREDICTION_COLUMNS = ("width", "height", "persons", "error", "error_retryable")


class StageError(ValueError):
    """A stage that cannot run as asked (no boxes and no detector, a column that is missing or of a type it cannot
    read, prediction columns already there); the message is one line naming the column."""


def estimate_poses(ds, *, image_column: str, model: str, detector: str | None = None, boxes_column: str | None = None,
                   flip_test: bool = False, dataset_index: int | None = None, dtype: str | None = None,
                   device: str = "auto", batch_size: int = 16, crops_per_forward: int | None = None,
                   compile: bool = False, actors: int | None = None, cpus_per_actor: float | None = None,
                   image_root: str | None = None):
    """Any Ray Dataset -> the same rows with the prediction columns appended (see the module docstring).

    model / detector: as `vitpose-batch annotate --model / --detector` takes them; boxes_column: the column of each
    row's person boxes (then no detector runs); image_root: where a struct's relative `path` resolves (default: as
    given). device "auto": a GPU per actor when the cluster has GPUs. batch_size: rows per actor call.
    Raises StageError (one line) when it cannot run as asked; never for a bad image."""
    import ray

    if boxes_column is None and detector is None:
        raise StageError("estimate_poses needs person boxes: pass detector=REF or boxes_column=COLUMN")
    schema = _known_schema(ds)
    if schema is not None:
        check_columns(schema, image_column, boxes_column)
    resources = ray.cluster_resources()
    device = ("cuda" if resources.get("GPU", 0) else "cpu") if device == "auto" else device
    if device.startswith("cuda") and not resources.get("GPU", 0):  # else the actors wait for a GPU forever
        raise StageError(f"estimate_poses: device {device!r}, but the Ray cluster has no GPU "
                         f"({int(resources.get('CPU', 0))} CPUs); use device='cpu' or 'auto'")
    pool, actor_cpus, threads = plan_actors(resources, device, SimpleNamespace(actors=actors,
                                                                               cpus_per_actor=cpus_per_actor))
    gpu = device.startswith("cuda")
    return ds.map_batches(
        PoseStage,
        fn_constructor_kwargs={
            "image_column": image_column, "boxes_column": boxes_column, "image_root": image_root,
            "model": model, "detector": None if boxes_column else detector, "device": device, "dtype": dtype,
            "flip_test": flip_test, "dataset_index": dataset_index, "crops_per_forward": crops_per_forward,
            "threads": threads, "compile": compile,
        },
        batch_size=batch_size, batch_format="pyarrow", compute=actor_pool(pool, 2 if gpu else 1),
        num_cpus=actor_cpus, num_gpus=1 if gpu else 0,
    )


def _known_schema(ds) -> pa.Schema | None:
    """The dataset's schema when Ray knows it without running anything; None otherwise."""
    try:
        schema = ds.schema(fetch_if_missing=False)
    except Exception:  # noqa: BLE001 - an older Ray, or a schema it cannot state: checked on the first batch
        return None
    return getattr(schema, "base_schema", schema) if schema is not None else None


def check_columns(schema: pa.Schema, image_column: str, boxes_column: str | None) -> None:
    """StageError unless the image (and boxes) column exist and the prediction columns do not."""
    names = list(schema.names)
    for column in filter(None, (image_column, boxes_column)):
        if column not in names:
            raise StageError(f"estimate_poses: no column {column!r}; the dataset has {', '.join(names)}")
    clash = [c for c in PREDICTION_COLUMNS if c in names]
    if clash:
        raise StageError(f"estimate_poses: the dataset already has {', '.join(clash)}, which the stage adds: "
                         "rename or drop them first")
    kind = image_kind(schema.field(image_column).type)
    if kind is None:
        raise StageError(f"estimate_poses: column {image_column!r} is {schema.field(image_column).type}: not image "
                         "bytes (binary, or a struct with a binary 'bytes' field) nor decoded HxWx3 uint8 arrays")


def image_kind(field_type: pa.DataType) -> str | None:
    """"bytes", "struct" (vitpose_batch.files.image_reader), "arrays" (a tensor extension column, as
    ray.data.read_images gives, or nested lists), or None."""
    kind = column_kind(field_type)
    if kind is not None:
        return kind
    if isinstance(field_type, pa.ExtensionType) or pa.types.is_list(field_type) \
            or pa.types.is_large_list(field_type) or pa.types.is_fixed_size_list(field_type):
        return "arrays"
    return None


def arrays_of(column: pa.ChunkedArray) -> list[Any]:
    """A tensor column's rows as numpy arrays (None where null)."""
    out: list[Any] = []
    for chunk in column.chunks:
        if isinstance(chunk, pa.ExtensionArray) and hasattr(chunk, "to_numpy"):
            rows = list(chunk.to_numpy())  # one stacked array, or an object array of differently shaped ones
        else:
            rows = [None if v is None else np.asarray(v) for v in chunk.to_pylist()]
        valid = chunk.is_valid().to_pylist()
        out += [row if ok else None for row, ok in zip(rows, valid)]
    return out


def boxes_of(value: Any) -> tuple[np.ndarray, np.ndarray]:
    """One row's boxes cell -> (boxes (n, 4) float32 xywh, scores (n,) float32; 1 where none is given)."""
    boxes, scores = [], []
    for box in value or ():
        if isinstance(box, dict):
            bbox, score = box.get("bbox") or box.get("box"), box.get("score", box.get("box_score"))
        else:
            bbox, score = box[:4], box[4] if len(box) > 4 else None
        boxes.append([float(v) for v in bbox])
        scores.append(1.0 if score is None else float(score))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1)


class PoseStage:
    """The Ray Data callable class behind `estimate_poses`: the user's batch in, the same batch plus the prediction
    columns out. Its PoseWorker is annotate's (decoding, detector, ViTPose, retries image by image)."""

    def __init__(self, image_column: str, boxes_column: str | None, image_root: str | None, **worker) -> None:
        self.image_column, self.boxes_column, self.image_root = image_column, boxes_column, image_root
        self.worker = PoseWorker(**worker, report_dropped=boxes_column is not None)
        keypoint_set = self.worker.estimator.keypoints_of(worker.get("dataset_index")).name
        self.settings = stage_settings(worker["model"], worker.get("detector"), boxes_column,
                                       bool(worker.get("flip_test")), worker.get("dataset_index"), worker.get("dtype"),
                                       keypoint_set)

    def __call__(self, batch: pa.Table) -> pa.Table:
        check_columns(batch.schema, self.image_column, self.boxes_column)
        items = self.items(batch)
        labelled = self.worker.label(items)
        for note in labelled.notes:
            log.warning("estimate_poses: %s", note)
        self.report_dropped(items, labelled.errors)
        predictions = self.worker.prediction_table(items, labelled)
        for name in PREDICTION_COLUMNS:
            batch = batch.append_column(PREDICTION_SCHEMA.field(name), predictions.column(name))
        # the settings that made these rows, for write_output's provenance
        return batch.replace_schema_metadata({**(batch.schema.metadata or {}), STAGE_METADATA: self.settings})

    def items(self, batch: pa.Table) -> list[Decoded]:
        """One Decoded per row: named by its image_uri / path column when there is one, decoded from its bytes or
        taken as the array it is, with the boxes of its boxes cell."""
        n = batch.num_rows
        names = next((batch.column(c).to_pylist() for c in ("image_uri", "path") if c in batch.column_names),
                     [f"row {i}" for i in range(n)])
        items = [Decoded(str(name), None) for name in names]
        column = batch.column(self.image_column)
        kind = image_kind(column.type)
        if kind == "arrays":
            for item, array in zip(items, arrays_of(column)):
                self.take_array(item, array)
        else:
            datas, errors, retryable = column_bytes(column.combine_chunks(), "", self.image_root)
            for item, error, again in zip(items, errors, retryable):
                item.error, item.retryable = error, again
            decode_batch(items, datas, pool=self.worker.pool, jpeg=self.worker.jpeg)
        if self.boxes_column is not None:
            for item, cell in zip(items, batch.column(self.boxes_column).to_pylist()):
                item.boxes, item.box_scores = boxes_of(cell)
        return items

    @staticmethod
    def take_array(item: Decoded, array: Any) -> None:
        if array is None:
            item.error, item.retryable = "no image in this row (null)", False
            return
        array = np.asarray(array)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            item.error, item.retryable = (f"not an HxWx3 uint8 image: {array.dtype} {tuple(array.shape)}", False)
            return
        item.image = np.ascontiguousarray(array)
        item.height, item.width = array.shape[:2]

    @staticmethod
    def report_dropped(items: list[Decoded], errors: list[str | None]) -> None:
        dropped = [(item.image_uri, box) for item, error in zip(items, errors) if error is None
                   for box in item.dropped]
        if dropped:
            counts: dict[str, int] = {}
            for _, box in dropped:
                counts[box["reason"]] = counts.get(box["reason"], 0) + 1
            first = dropped[0]
            log.warning("estimate_poses: %d unusable boxes left out (%s), e.g. %s %s", len(dropped),
                        ", ".join(f"{k}: {v}" for k, v in counts.items()), first[0], first[1]["bbox"])
