"""One writer per OUTPUT: a lease the run holds from before its first write to after its last.

A second run on the same OUTPUT is refused before it does any work, with one line naming the run that holds it.

* Local disks (and NFS): `OUTPUT/_lease`, locked with `flock`. The kernel drops the lock when the holder dies, so a
  killed run's successor takes over at once; the file says who holds it, for the refusal message. The file is never
  deleted (deleting a locked file lets two runs lock two different files).
* S3 and GCS: `OUTPUT/_lease.json`, created with a conditional write (S3 `If-None-Match: *`, GCS
  `ifGenerationMatch=0`) and renewed every `ttl/4` seconds with a write conditional on the version the holder last
  wrote (S3 `If-Match: <etag>`, GCS `ifGenerationMatch=<generation>`). A lease not renewed for `ttl` seconds belongs
  to a dead run; a successor takes it over with the same conditional write, so of two successors exactly one wins.
  A holder that fails to renew (another run took over while it stalled) stops before its next commit.
* Other fsspec filesystems have no conditional write: the lease is written and read back (best effort), and a
  warning says so.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from vitpose_batch.files.storage import protocols
from vitpose_batch.output.layout import Output

log = logging.getLogger("vitpose_batch")

DEFAULT_TTL_S = 120.0


class LeaseHeld(ValueError):
    """OUTPUT is being written by another live run."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it stalled past the TTL); it must not commit anything more."""


@dataclass
class Holder:
    run_id: str
    host: str
    pid: int
    started_at: float
    renewed_at: float
    ttl_s: float

    @classmethod
    def me(cls, run_id: str, ttl_s: float) -> Holder:
        now = time.time()
        return cls(run_id, socket.gethostname(), os.getpid(), now, now, ttl_s)

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            fields = json.loads(data)
            return cls(**{k: fields[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"run {self.run_id} (pid {self.pid} on {self.host}, started {started})"


def _held_message(output: Output, holder: Holder | None, extra: str) -> str:
    who = holder.describe() if holder else "another run"
    return (f"output {output} is being written by {who}{extra}; one run writes an OUTPUT at a time: wait for it "
            "to finish (the same command then resumes from where it stopped), or write to another OUTPUT")


class Lease:
    """Base: `acquire()` or raise LeaseHeld; `check()` before each commit; `release()` at the end."""

    def __init__(self, output: Output, run_id: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.output, self.run_id, self.ttl_s = output, run_id, ttl_s
        self.fs, self.folder = output.fs, output.folder

    def acquire(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Raise LeaseLost if this run no longer holds OUTPUT."""

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class LocalLease(Lease):
    def acquire(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        path = self.output.local_lease
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(os.pread(fd, 65536, 0))
            os.close(fd)
            raise LeaseHeld(_held_message(self.output, holder, "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me(self.run_id, self.ttl_s).to_bytes(), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is None:
            return
        self.fd = None
        os.ftruncate(fd, 0)  # emptied, not deleted (see the module docstring)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class ConditionalWriteFailed(Exception):
    """The store refused a conditional write: someone else wrote the object first."""


class ObjectLease(Lease):
    """Lease on an object store; subclasses provide create / replace-if-version / read / delete."""

    def __init__(self, output: Output, run_id: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        super().__init__(output, run_id, ttl_s)
        self.path = output.object_lease
        self.version: str | None = None
        self.lost: str | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.holder = Holder.me(run_id, ttl_s)

    # store operations -------------------------------------------------------------------------------------------
    def create(self, data: bytes) -> str:
        raise NotImplementedError

    def replace(self, data: bytes, version: str) -> str:
        raise NotImplementedError

    def read(self) -> tuple[bytes, str] | None:
        raise NotImplementedError

    def delete(self, version: str) -> None:
        raise NotImplementedError

    # protocol ---------------------------------------------------------------------------------------------------
    def acquire(self) -> None:
        self.holder.renewed_at = time.time()
        for _ in range(3):  # a lease deleted between our create and our read: try again
            try:
                self.version = self.create(self.holder.to_bytes())
                break
            except ConditionalWriteFailed:
                pass
            current = self.read()
            if current is None:
                continue
            data, version = current
            other = Holder.parse(data)
            age = time.time() - other.renewed_at if other else float("inf")
            ttl = other.ttl_s if other else self.ttl_s
            if age <= ttl:
                raise LeaseHeld(_held_message(self.output, other, f", last renewed {age:.0f} s ago"))
            try:
                self.version = self.replace(self.holder.to_bytes(), version)
            except ConditionalWriteFailed:
                raise LeaseHeld(_held_message(self.output, None, " (it took over a stale lease just now)")) from None
            log.warning("took over %s from %s, silent for %.0f s", self.output,
                        other.describe() if other else "an unreadable lease", age)
            break
        else:
            raise LeaseHeld(_held_message(self.output, None, " (the lease keeps changing)"))
        self.thread = threading.Thread(target=self._renew_loop, name="vitpose-lease", daemon=True)
        self.thread.start()

    def _renew_loop(self) -> None:
        while not self.stop.wait(self.ttl_s / 4):
            try:
                self.holder.renewed_at = time.time()
                self.version = self.replace(self.holder.to_bytes(), self.version)
            except ConditionalWriteFailed:
                self.lost = "another run took it over"
                return
            except Exception as exc:  # noqa: BLE001 - storage blinks: try again next period, within the TTL
                log.warning("lease renewal on %s failed (%s); retrying", self.output, exc)

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"output {self.output}: this run lost its lease ({self.lost}); stopped before "
                            "committing more")

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            self.thread = None
        if self.version is not None and not self.lost:
            try:
                self.delete(self.version)
            except Exception as exc:  # noqa: BLE001 - a lease left behind expires after its TTL
                log.warning("could not release the lease on %s: %s", self.output, exc)
        self.version = None


def _precondition_failed(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, FileExistsError) or any(
        code in text for code in ("precondition", "pre-condition", "412", "conditionalrequestconflict", "409"))


class S3Lease(ObjectLease):
    def _call(self, method: str, **kwargs):
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path)
        try:
            return sync(self.fs.loop, self.fs._call_s3, method, Bucket=bucket, Key=key, **kwargs)
        except Exception as exc:
            if _precondition_failed(exc):
                raise ConditionalWriteFailed(str(exc)) from None
            raise

    def create(self, data: bytes) -> str:
        return self._call("put_object", Body=data, IfNoneMatch="*")["ETag"]

    def replace(self, data: bytes, version: str) -> str:
        return self._call("put_object", Body=data, IfMatch=version)["ETag"]

    def read(self) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path)

        async def get() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with response["Body"] as body:  # body and ETag of one and the same version
                return await body.read(), response["ETag"]

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def delete(self, version: str) -> None:
        self._call("delete_object", IfMatch=version)


class GCSLease(ObjectLease):
    def _upload(self, data: bytes, generation: str) -> str:
        from urllib.parse import quote

        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path)
        url = f"{self.fs._location}/upload/storage/v1/b/{quote(bucket)}/o"
        # a multipart upload (metadata + body), the form every GCS implementation honours preconditions on
        body = (b'--==0==\nContent-Type: application/json; charset=UTF-8\n\n' + json.dumps({"name": key}).encode()
                + b"\n--==0==\nContent-Type: application/json\n\n" + data + b"\n--==0==--")
        try:
            out = sync(self.fs.loop, self.fs._call, "POST", url, uploadType="multipart",
                       ifGenerationMatch=generation, data=body, json_out=True,
                       headers={"Content-Type": 'multipart/related; boundary="==0=="'})
        except Exception as exc:
            if _precondition_failed(exc):
                raise ConditionalWriteFailed(str(exc)) from None
            raise
        self.fs.invalidate_cache(self.path)
        return str(out["generation"])

    def create(self, data: bytes) -> str:
        return self._upload(data, "0")

    def replace(self, data: bytes, version: str) -> str:
        return self._upload(data, version)

    def read(self) -> tuple[bytes, str] | None:
        for _ in range(5):  # body and generation of one and the same version
            try:
                self.fs.invalidate_cache(self.path)
                before = str(self.fs.info(self.path)["generation"])
                data = self.fs.cat_file(self.path)
                self.fs.invalidate_cache(self.path)
                if str(self.fs.info(self.path)["generation"]) == before:
                    return data, before
            except FileNotFoundError:
                return None
        raise LeaseHeld(f"output {self.output}: its lease keeps changing; another run is starting on it")

    def delete(self, version: str) -> None:
        self.fs.rm(self.path)


class BestEffortLease(ObjectLease):
    """A filesystem without conditional writes: write, wait, read back; racing runs are very likely caught."""

    def create(self, data: bytes) -> str:
        if self.fs.exists(self.path):
            raise ConditionalWriteFailed("exists")
        self.fs.pipe_file(self.path, data)
        time.sleep(1.0)
        if self.fs.cat_file(self.path) != data:
            raise ConditionalWriteFailed("overwritten")
        return "1"

    def replace(self, data: bytes, version: str) -> str:
        self.fs.pipe_file(self.path, data)
        return version

    def read(self) -> tuple[bytes, str] | None:
        try:
            return self.fs.cat_file(self.path), "1"
        except FileNotFoundError:
            return None

    def delete(self, version: str) -> None:
        self.fs.rm(self.path)


def make_lease(output: Output, run_id: str, ttl_s: float = DEFAULT_TTL_S) -> Lease:
    """The lease kind OUTPUT's filesystem supports (see the module docstring)."""
    names = protocols(output.fs)
    if output.is_local:
        return LocalLease(output, run_id, ttl_s)
    if "s3" in names:
        return S3Lease(output, run_id, ttl_s)
    if "gs" in names or "gcs" in names:
        return GCSLease(output, run_id, ttl_s)
    log.warning("%s has no conditional writes: two runs started within a second of each other may both run",
                output)
    return BestEffortLease(output, run_id, ttl_s)
