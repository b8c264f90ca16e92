"""Run records: `OUTPUT/_runs/<run>.json`, one per run that wrote OUTPUT: who ran, with which package version and
input, what it counted, how it ended ("running" until then; a dead run's record is marked "killed" by the next)."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from vitpose_batch.output.layout import Output
from vitpose_batch.output.provenance import package_version, read_run_records

COUNTS = ("images", "persons", "errors", "skipped", "redone", "recovered", "files")


def new_run_id() -> str:
    """A run id that sorts by start time: `20261125T101500-3f2a9c1e`."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def write_run_record(output: Output, run_id: str, status: str, started: float, counts: dict[str, int], *,
                     input: str, extra: dict[str, Any] | None = None, error: str | None = None) -> None:
    """Write (or rewrite) the run's record; `counts` by COUNTS (absent ones 0); `extra` fields are added as given."""
    record = {
        "run_id": run_id, "status": status, "version": package_version(), "input": input,
        "host": socket.gethostname(), "pid": os.getpid(), "started": started,
        "ended": None if status == "running" else time.time(),
        **{key: int(counts.get(key, 0)) for key in COUNTS}, "error": error, **(extra or {}),
    }
    output.fs.makedirs(output.runs_folder, exist_ok=True)
    output.fs.pipe_file(output.run_record(run_id), json.dumps(record, indent=2).encode())


def mark_dead_runs(output: Output) -> None:
    """Runs recorded as running while we hold the lease died without a word (SIGKILL, lost node): say so."""
    for path, record in read_run_records(output):
        if record is not None and record.get("status") == "running":
            record.update(status="killed", ended=None)
            output.fs.pipe_file(path, json.dumps(record, indent=2).encode())
