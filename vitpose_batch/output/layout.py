"""What an annotate OUTPUT holds and where: the one home of every name in it, and the one place OUTPUT is opened.

OUTPUT is a local folder or an fsspec URL (`s3://bucket/prefix`, `gs://...`). Its layout:

    part-<run>-<seq>.parquet               live rows: every `*.parquet` directly under OUTPUT, and nothing else
                                           (`vitpose_batch.output.parts`)
    _job.json                              what made the rows, fixed at creation (`vitpose_batch.output.provenance`)
    _runs/<run>.json                       one record per run that wrote OUTPUT (`vitpose_batch.output.runs`)
    _staging/<run>-<seq>-<chunk>.staged    rows committed since the run's last live part (`parts`)
    _lease / _lease.json                   the one writer's lease: flock on local disks / conditional writes on
                                           object stores (`vitpose_batch.output.lease`)

Every file that is not a live part is named `_*` or `.*` (a local write's temporary is `.<name>.<hex>.tmp`), so a
reader of `*.parquet` sees rows only, and a user's own `_*` file (`--coco-json OUTPUT/_results.json`) is safe there.

A command opens OUTPUT once, `Output.open(uri)` (the file system and its credentials resolved there), and passes the
`Output` down. The review commands open PREDICTIONS the same way; there `folder` may also name one `.parquet` part
or (evaluate) a COCO results `.json` file instead of an OUTPUT folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import fsspec

from vitpose_batch.files.storage import is_local, open_filesystem

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
JOB_RECORD = "_job.json"
RUNS = "_runs"  # one `<run id>.json` per run: who ran, with which version and input, how it ended
STAGING = "_staging"
STAGED_SUFFIX = ".staged"
LOCAL_LEASE = "_lease"
OBJECT_LEASE = "_lease.json"


def part_name(run_id: str, seq: int) -> str:
    """`part-<run>-<seq>.parquet`: the file name of a run's live part number `seq`."""
    return f"{PART_PREFIX}{run_id}-{seq:06d}{PART_SUFFIX}"


def staged_name(run_id: str, seq: int, chunk: int) -> str:
    """`_staging/<run>-<seq>-<chunk>.staged`, relative to OUTPUT: a chunk of rows committed for part `seq`."""
    return f"{STAGING}/{run_id}-{seq:06d}-{chunk:06d}{STAGED_SUFFIX}"


@dataclass(frozen=True, repr=False)
class Output:
    """An opened OUTPUT: `uri` as the user gave it (what messages name: `str(output)` is it), `fs` the fsspec file
    system it is on, `folder` its path on `fs` without a trailing slash; the paths of its layout (module docstring)."""

    uri: str
    fs: fsspec.AbstractFileSystem
    folder: str

    @classmethod
    def open(cls, uri: Output | str) -> Output:
        """The Output at `uri` (a local path, taken literally, or an fsspec URL; credentials from the environment);
        `uri` itself when it is already an Output."""
        if isinstance(uri, Output):
            return uri
        fs, folder = open_filesystem(uri)
        return cls(uri, fs, folder)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Output({self.uri!r})"

    @property
    def is_local(self) -> bool:
        """Whether OUTPUT is on a local (or NFS) disk."""
        return is_local(self.fs)

    def path(self, name: str) -> str:
        """`name` (a file name or relative path) under OUTPUT, on `fs`."""
        return f"{self.folder}/{name}"

    def part(self, run_id: str, seq: int) -> str:
        """The live part `part-<run>-<seq>.parquet`."""
        return self.path(part_name(run_id, seq))

    @property
    def job_record(self) -> str:
        """`_job.json`: the provenance of the rows."""
        return self.path(JOB_RECORD)

    @property
    def runs_folder(self) -> str:
        """`_runs`: the run records."""
        return self.path(RUNS)

    def run_record(self, run_id: str) -> str:
        """`_runs/<run>.json`."""
        return f"{self.runs_folder}/{run_id}.json"

    @property
    def staging(self) -> str:
        """`_staging`: rows committed since a run's last live part."""
        return self.path(STAGING)

    def staged(self, run_id: str, seq: int, chunk: int) -> str:
        """`_staging/<run>-<seq>-<chunk>.staged`."""
        return self.path(staged_name(run_id, seq, chunk))

    @property
    def local_lease(self) -> str:
        """`_lease`: the flock'd lease file of a local OUTPUT."""
        return self.path(LOCAL_LEASE)

    @property
    def object_lease(self) -> str:
        """`_lease.json`: the conditionally written lease object of an OUTPUT on an object store."""
        return self.path(OBJECT_LEASE)
