"""One writing run under the OUTPUT protocol: the steps `annotate` and `write_output` share, in their one order.

    session = OutputSession(output, wanted, keypoint_set, source="...")
    session.check()                      # before any work: OUTPUT made with other settings is refused, untouched
    with session.run(counts, extra) as run:
        # the lease is held; the record settled; dead runs marked; this run's record says "running";
        # a killed run's staged rows folded in (run.recovered)
        writer = run.writer(schema, rows_per_file, commit_interval)
        ...                              # add rows; the writer checks the lease at every commit
    # the run's record says "complete", "stopped" (Ctrl-C, SIGTERM) or "failed"; the lease is released

What changes between the two callers is only what they feed the writer: annotate its listing's new images and
videos through the pose actors, write_output any dataset of prediction rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa

from vitpose_batch.output import lease as leases
from vitpose_batch.output import parts, provenance, runs
from vitpose_batch.output.layout import RUNS, Output
from vitpose_core.hub import one_line

log = logging.getLogger("vitpose_batch")


@dataclass
class SessionRun:
    """What a run under the lease has: its id, start time, lease and part metadata, and the rows of a killed run it
    recovered."""

    output: Output
    run_id: str
    started: float
    lease: leases.Lease
    metadata: dict[str, str]
    recovered: int = 0
    part_writer: parts.PartWriter | None = None

    def writer(self, schema: pa.Schema, rows_per_file: int = parts.DEFAULT_ROWS_PER_FILE,
               commit_interval: float = parts.DEFAULT_COMMIT_INTERVAL_S) -> parts.PartWriter:
        """The run's PartWriter (one per run: its parts are numbered in one sequence)."""
        if self.part_writer is not None:
            raise RuntimeError("a run has one PartWriter")
        self.part_writer = parts.PartWriter(self.output, self.run_id, schema, self.metadata,
                                            rows_per_file=rows_per_file, commit_interval=commit_interval,
                                            check=self.lease.check)
        return self.part_writer


class OutputSession:
    """OUTPUT, the settings this run writes with (`wanted`), the keypoint set of its rows and what it reads
    (`source`, for the run record)."""

    def __init__(self, output: Output, wanted: provenance.Provenance, keypoint_names: list[str],
                 keypoint_set: str, source: str, lease_ttl: float = leases.DEFAULT_TTL_S,
                 wrap_lease_errors: bool = False,
                 stopped: tuple[type[BaseException], ...] = (KeyboardInterrupt,)) -> None:
        """wrap_lease_errors: a lease that cannot be taken for another reason than a holder (permission, missing
        bucket) is a one-line ValueError naming OUTPUT (the command's wording) instead of the storage error;
        stopped: the exceptions that end a run as "stopped" (asked to stop) rather than "failed"."""
        self.output, self.wanted, self.source = output, wanted, source
        self.keypoint_names, self.keypoint_set = list(keypoint_names), keypoint_set
        self.lease_ttl, self.wrap_lease_errors, self.stopped = lease_ttl, wrap_lease_errors, stopped

    def check(self) -> None:
        """Refuse, before any work, an OUTPUT made with other settings (provenance.SettingsChanged)."""
        record = provenance.load_record(self.output)
        if record is not None:
            provenance.check_settings(self.output, record, self.wanted)

    @contextmanager
    def run(self, counts: Callable[[], dict[str, int]], extra: Callable[[], dict] | None = None,
            run_id: str | None = None) -> Iterator[SessionRun]:
        """Hold OUTPUT for one run (see the module docstring). counts / extra: the run record's counts
        (runs.COUNTS) and extra fields, asked for at every record written. Raises leases.LeaseHeld when another
        run holds OUTPUT."""
        run_id = run_id or runs.new_run_id()
        lease = leases.make_lease(self.output, run_id, self.lease_ttl)
        try:
            lease.acquire()
        except leases.LeaseHeld:
            raise
        except Exception as exc:
            if not self.wrap_lease_errors:
                raise
            raise ValueError(f"output {str(self.output)!r} is not writable: {one_line(exc)}") from None
        started = time.time()

        def record(status: str, error: str | None = None) -> None:
            runs.write_run_record(self.output, run_id, status, started, counts(), input=self.source,
                                  extra=extra() if extra else None, error=error)

        try:
            # under the lease: the record cannot change between this check and the first commit
            settled = provenance.settle_record(self.output, self.wanted)
            version = provenance.package_version()
            if settled.get("created_by") not in (version, None):
                log.warning("%s was created by vitpose-batch %s; this run is %s (recorded per run in %s/)",
                            self.output, settled.get("created_by"), version, RUNS)
            runs.mark_dead_runs(self.output)
            run = SessionRun(self.output, run_id, started, lease,
                             parts.part_metadata(self.wanted.as_dict(), self.keypoint_names, self.keypoint_set,
                                                 version, run_id))
            record("running")
            run.recovered = parts.recover_staging(self.output)
            yield run
            record("complete")
        except BaseException as exc:
            status = "stopped" if isinstance(exc, self.stopped) else "failed"
            try:
                record(status, error=str(exc)[:500])
            except Exception:  # noqa: BLE001 - the original failure is the one to report
                pass
            raise
        finally:
            lease.release()
