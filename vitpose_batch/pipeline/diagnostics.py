"""What the pose actors report beside the rows: boxes left out, retried batches, warnings (each said once)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger("vitpose_batch")

DROPPED_TYPE = pa.list_(pa.struct([("reason", pa.string()), ("bbox", pa.list_(pa.float32()))]))
COLUMNS = ("_dropped", "_retried", "_notes")


class DroppedBoxes:
    """Boxes left out, counted per reason, with the first `keep` of each reason named (image, box, where in the
    boxes file). Fed by the boxes file's reading (vitpose_batch.schemas.box_files.BoxIndex.dropped) and by the actors' rows."""

    def __init__(self, keep: int = 10) -> None:
        self.keep = keep
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[dict]] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str, image: str, bbox: Iterable[float], where: str | None = None) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.keep:
            example = {"image": image, "bbox": [round(float(v), 3) for v in bbox]}
            examples.append(example | ({"where": where} if where else {}))

    def lines(self, per_reason: int = 3) -> list[str]:
        """The summary's lines: the total, then per reason its count and its first `per_reason` boxes named."""
        if not self.total:
            return []
        out = [f"unusable boxes left out: {self.total}"]
        for reason, count in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            named = "; ".join(f"{e['where'] + ' of ' if e.get('where') else ''}{e['image']} {e['bbox']}"
                              for e in self.examples[reason][:per_reason])
            more = ", ..." if count > per_reason else ""
            out.append(f"  {reason}: {count} ({named}{more})")
        return out

    def record(self) -> dict:
        """For the run record: counts per reason and the examples kept."""
        return {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}


class Diagnostics:
    """Accumulates the diagnostic columns of the batches the driver receives and logs each distinct note once."""

    def __init__(self, dropped: DroppedBoxes | None = None) -> None:
        self.dropped = dropped if dropped is not None else DroppedBoxes()
        self.retried_batches = 0
        self.notes: dict[str, int] = {}

    def take(self, batch: pa.Table) -> pa.Table:
        """Count and strip the diagnostic columns of `batch`."""
        names = batch.column_names
        if "_dropped" in names:
            lengths = pc.list_value_length(batch.column("_dropped")).to_numpy(zero_copy_only=False)
            if lengths.any():
                uris = batch.column("image_uri").to_pylist()
                for uri, boxes in zip(uris, batch.column("_dropped").to_pylist()):
                    for box in boxes or ():
                        self.dropped.add(box["reason"], uri, box["bbox"])
        if "_retried" in names:
            self.retried_batches += pc.sum(pc.cast(batch.column("_retried"), pa.int64())).as_py() or 0
        if "_notes" in names:
            for note in pc.list_flatten(batch.column("_notes")).to_pylist():
                if note not in self.notes:
                    log.warning("worker: %s", note)
                self.notes[note] = self.notes.get(note, 0) + 1
        return batch.drop_columns([c for c in COLUMNS if c in names])
