"""Parquet sink: each write task commits one part file, whole or not at all, named so a retry overwrites itself."""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from jobs.storage import PART_PREFIX, PART_SUFFIX, open_filesystem, write_table_atomic
from schemas.predictions import PREDICTION_SCHEMA


class PredictionSink(Datasink):
    """Writes `part-<run>-<task>.parquet` under OUTPUT and returns per-task counts for the job summary."""

    def __init__(self, output: str, run_id: str) -> None:
        self.output = output
        self.run_id = run_id
        self.totals = {"images": 0, "persons": 0, "errors": 0, "files": 0}
        self.commits: list[tuple[float, int]] = []  # (commit time, persons) per part file, for steady-state rates

    def write(self, blocks: Iterable, ctx) -> dict[str, int]:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return {"images": 0, "persons": 0, "errors": 0, "files": 0}
        table = pa.concat_tables([t.select(PREDICTION_SCHEMA.names).cast(PREDICTION_SCHEMA) for t in tables])
        fs, folder = open_filesystem(self.output)
        name = f"{PART_PREFIX}{self.run_id}-{ctx.task_idx:06d}{PART_SUFFIX}"
        write_table_atomic(fs, table, posixpath.join(folder, name))
        persons = pc.sum(pc.list_value_length(table.column("persons"))).as_py() or 0
        return {"images": table.num_rows, "persons": persons,
                "errors": table.num_rows - table.column("error").null_count, "files": 1, "at": time.time()}

    def on_write_complete(self, write_result) -> None:
        for counts in write_result.write_returns:
            for key in self.totals:
                self.totals[key] += counts.get(key, 0)
            if "at" in counts:
                self.commits.append((counts["at"], counts["persons"]))
        self.commits.sort()

    def get_name(self) -> str:
        return "VitPosePredictions"
