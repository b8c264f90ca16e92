"""Any Ray Dataset of prediction rows in and out of an OUTPUT, under the OUTPUT protocol.

    ds = vitpose_batch.estimate_poses(ds, image_column="image", model=REF, boxes_column="boxes")
    summary = vitpose_batch.write_output(ds, "s3://bucket/out", key_column="path")
    rows = vitpose_batch.read_output("s3://bucket/out")        # a Ray Dataset of the committed rows

`write_output` takes OUTPUT's lease, checks or creates its provenance (`_job.json`: from the settings
`estimate_poses` stamped on its batches, or the keywords given), records the run (`_runs/`), and commits the rows
as right-sized parts through the driver exactly as annotate does (`parts.PartWriter`). Exactly once, keyed by
`key_column`: rows whose key OUTPUT already holds, or that this run already wrote, are not written again, so a re-run
after a kill completes OUTPUT without a duplicate. Columns beyond the prediction columns are kept.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from vitpose_batch.defaults import DEFAULT_COMMIT_INTERVAL_S, DEFAULT_ROWS_PER_FILE
from vitpose_batch.files.storage import arrow_filesystem
from vitpose_batch.output import parts, provenance, resume, runs
from vitpose_batch.output.layout import Output
from vitpose_batch.output.session import OutputSession
from vitpose_batch.schemas.predictions import FRAME_FIELDS, PREDICTION_SCHEMA
from vitpose_core.keypoint_sets import get_keypoint_set

log = logging.getLogger("vitpose_batch")

STAGE_METADATA = b"vitpose.stage"  # the settings estimate_poses stamps on the schema of every batch it makes


class OutputRowsError(ValueError):
    """Rows that cannot be committed as asked (no settings, no key column); the message is one line."""


@dataclass
class WriteSummary:
    run_id: str
    images: int = 0
    persons: int = 0
    errors: int = 0
    files: int = 0
    skipped: int = 0  # rows whose key OUTPUT (or this run) already held
    seconds: float = 0.0


def stage_settings(model: str, detector: str | None, boxes_column: str | None, flip_test: bool,
                   dataset_index: int | None, dtype: str | None, keypoint_set: str) -> bytes:
    """What estimate_poses stamps on its batches (STAGE_METADATA): the settings that make its rows."""
    return json.dumps({"model": model, "detector": detector, "boxes_column": boxes_column, "flip_test": flip_test,
                       "dataset_index": dataset_index, "dtype": dtype, "keypoint_set": keypoint_set}).encode()


def settings_from(schema: pa.Schema, given: dict) -> dict:
    """The run's settings: the keywords given, else what estimate_poses stamped on the rows."""
    stamped = json.loads((schema.metadata or {}).get(STAGE_METADATA, b"{}"))
    settings = {**stamped, **{k: v for k, v in given.items() if v is not None}}
    if not settings.get("model"):
        raise OutputRowsError("write_output: the rows carry no settings (they were not made by estimate_poses): pass "
                              "model=REF and detector= or boxes=, flip_test=, dataset_index=, dtype= as they were made")
    return settings


def provenance_of(settings: dict) -> provenance.Provenance:
    ref, fingerprint = provenance.canonical_ref, provenance.fingerprint
    boxes = settings.get("boxes") or (f"column {settings['boxes_column']}" if settings.get("boxes_column") else None)
    detector = None if boxes else settings.get("detector")
    keypoint_set = settings.get("keypoint_set") or "coco"
    return provenance.Provenance(
        model=ref(settings["model"]), model_fingerprint=fingerprint(settings["model"]),
        detector=ref(detector) if detector else None, detector_fingerprint=fingerprint(detector) if detector else None,
        boxes=boxes, boxes_fingerprint=fingerprint(settings["boxes"]) if settings.get("boxes") else None,
        flip_test=bool(settings.get("flip_test")), dataset_index=settings.get("dataset_index"),
        dtype=settings.get("dtype") or "fp32", decode=dict(provenance.DECODING), keypoint_set=keypoint_set)


def keyed(table: pa.Table, key_column: str) -> pa.Table:
    """The rows with `image_uri` holding their key (a dataset without `image_uri` takes it from `key_column`), an
    `image_id` and the video columns (null where the rows have none)."""
    if "image_id" not in table.column_names:
        table = table.append_column("image_id", pa.nulls(table.num_rows, pa.int64()))
    for field in FRAME_FIELDS:  # video frames' columns: null for images
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    if key_column == "image_uri" or "image_uri" not in table.column_names:
        if key_column not in table.column_names:
            raise OutputRowsError(f"write_output: no key column {key_column!r}; the rows have "
                                  f"{', '.join(table.column_names)}")
        if key_column != "image_uri":
            table = table.append_column("image_uri", table.column(key_column).cast(pa.string()))
        return table
    raise OutputRowsError(f"write_output: the rows have an image_uri column, which keys OUTPUT; key_column "
                          f"{key_column!r} would be a second key (leave key_column as image_uri)")


def output_schema(table: pa.Table) -> pa.Schema:
    """PREDICTION_SCHEMA first, then the rows' other columns as they are."""
    extra = [f for f in table.schema if f.name not in PREDICTION_SCHEMA.names]
    for name in PREDICTION_SCHEMA.names:
        if name not in table.column_names and name != "image_id":
            raise OutputRowsError(f"write_output: the rows lack the prediction column {name!r} (made by "
                                  "estimate_poses?)")
    return pa.schema(list(PREDICTION_SCHEMA) + extra)


def write_output(ds, output: Output | str, *, key_column: str = "image_uri", model: str | None = None,
                 detector: str | None = None, boxes: str | None = None, flip_test: bool | None = None,
                 dataset_index: int | None = None, dtype: str | None = None,
                 rows_per_file: int | None = None, commit_interval: float | None = None) -> WriteSummary:
    """Commit the prediction rows of `ds` under OUTPUT (a local path or fsspec URL, or an opened Output; see the
    module docstring); returns what was written.

    Raises OutputRowsError (rows without settings or key), provenance.SettingsChanged (OUTPUT was made with other
    settings: nothing is written), leases.LeaseHeld (another run writes OUTPUT): one line each."""
    started = time.time()  # the dataset runs as it is read: its stages (estimate_poses) count in the run's time
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    first = next(batches, None)
    if first is None:
        return WriteSummary(run_id="")
    first = keyed(first, key_column)
    wanted = provenance_of(settings_from(first.schema, dict(model=model, detector=detector, boxes=boxes,
                                                          flip_test=flip_test, dataset_index=dataset_index,
                                                          dtype=dtype)))
    output = Output.open(output)  # the one opening of OUTPUT: everything below is handed this
    keypoint_set = get_keypoint_set(wanted.keypoint_set)
    session = OutputSession(output, wanted, keypoint_set.keypoint_names, keypoint_set.name,
                            source=f"a Ray Dataset (write_output, keyed by {key_column})")
    session.check()
    summary = WriteSummary(run_id=runs.new_run_id())
    try:
        with session.run(lambda: asdict(summary), run_id=summary.run_id) as run:
            done = resume.scan_output(output).finished
            written = resume.GrowingKeySet()  # this run's keys: a key the dataset repeats is written once
            writer = run.writer(output_schema(first), rows_per_file=rows_per_file or DEFAULT_ROWS_PER_FILE,
                                commit_interval=commit_interval or DEFAULT_COMMIT_INTERVAL_S)
            table = first
            while table is not None:
                keys = resume.uri_keys(table.column("image_uri"))
                fresh = ~done.contains(keys) & ~written.contains(keys)
                _, first_of_key = np.unique(keys, axis=0, return_index=True)  # a key twice in one batch: once
                once = np.zeros(len(keys), bool)
                once[first_of_key] = True
                fresh &= once
                summary.skipped += int((~fresh).sum())
                if fresh.any():
                    writer.add(table.filter(pa.array(fresh)))
                    written.add(keys[fresh])
                table = next(batches, None)
                table = keyed(table, key_column) if table is not None else None
            writer.close()
            for key in ("images", "persons", "errors", "files"):
                setattr(summary, key, writer.totals[key])
            summary.seconds = time.time() - started
    finally:
        summary.seconds = time.time() - started
    return summary


def read_output(output: Output | str):
    """The committed rows of OUTPUT (a local path or fsspec URL, or an opened Output: its live parts) as a Ray
    Dataset."""
    import ray.data  # lazy: Ray only when a dataset is made

    output = Output.open(output)
    files = parts.list_part_files(output)
    if not files:
        raise OutputRowsError(f"read_output: {output} holds no part files")
    return ray.data.read_parquet(files, filesystem=arrow_filesystem(output.fs))
