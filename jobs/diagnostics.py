"""What the pose actors report beside the rows: dropped boxes, retried batches, warnings (each said once)."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger("vitpose_batch")

COLUMNS = ("_dropped_boxes", "_retried", "_notes")


class Diagnostics:
    """Accumulates the diagnostic columns of the batches the driver receives and logs each distinct note once."""

    def __init__(self) -> None:
        self.dropped_boxes = 0
        self.retried_batches = 0
        self.notes: dict[str, int] = {}

    def take(self, batch: pa.Table) -> pa.Table:
        """Count and strip the diagnostic columns of `batch`."""
        names = batch.column_names
        if "_dropped_boxes" in names:
            self.dropped_boxes += pc.sum(batch.column("_dropped_boxes")).as_py() or 0
        if "_retried" in names:
            self.retried_batches += pc.sum(pc.cast(batch.column("_retried"), pa.int64())).as_py() or 0
        if "_notes" in names:
            for note in pc.list_flatten(batch.column("_notes")).to_pylist():
                if note not in self.notes:
                    log.warning("worker: %s", note)
                self.notes[note] = self.notes.get(note, 0) + 1
        return batch.drop_columns([c for c in COLUMNS if c in names])
