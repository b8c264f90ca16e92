"""The local object-store servers work with fsspec URLs, configured by env vars only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import uuid

import fsspec
import pytest


def _bucket(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _write_read_list(scheme: str, bucket: str) -> None:
    url = f"{scheme}://{bucket}/images/a.bin"
    payload = bytes(range(256)) * 64
    with fsspec.open(url, "wb") as f:
        f.write(payload)
    with fsspec.open(url, "rb") as f:
        assert f.read() == payload
    for name in ("b.bin", "sub/c.bin"):
        with fsspec.open(f"{scheme}://{bucket}/images/{name}", "wb") as f:
            f.write(name.encode())
    with fsspec.open(f"{scheme}://{bucket}/other/d.bin", "wb") as f:
        f.write(b"d")

    fs, _ = fsspec.url_to_fs(f"{scheme}://{bucket}")
    fs.invalidate_cache()
    listed = sorted(fs.ls(f"{bucket}/images", detail=False))
    assert listed == [f"{bucket}/images/a.bin", f"{bucket}/images/b.bin", f"{bucket}/images/sub"]
    found = sorted(fs.find(f"{bucket}/images"))
    assert found == [f"{bucket}/images/a.bin", f"{bucket}/images/b.bin", f"{bucket}/images/sub/c.bin"]
    assert fs.size(url) == len(payload)


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


# --------------------------------------------------------------------------- S3


def test_s3_env_roundtrip_and_list(s3_env):
    server = s3_env
    bucket = server.make_bucket(_bucket("rt"))
    _write_read_list("s3", bucket)
    # the env-configured filesystem really went to the local server
    fs, _ = fsspec.url_to_fs(f"s3://{bucket}")
    assert fs.client_kwargs == {} and not fs.endpoint_url  # nothing but env vars
    assert server.filesystem().cat(f"{bucket}/images/b.bin") == b"b.bin"


def test_s3_rejects_wrong_credentials(s3_env, monkeypatch):
    bucket = s3_env.make_bucket(_bucket("auth"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    with pytest.raises(PermissionError):
        fs.ls(bucket)


def test_s3_stop_start_preserves_objects(s3_env):
    server = s3_env
    bucket = server.make_bucket(_bucket("restart"))
    with fsspec.open(f"s3://{bucket}/keep.txt", "wb") as f:
        f.write(b"survives restart")
    endpoint = server.endpoint_url
    server.stop()
    try:
        assert not server.running and _refused(server.port)
    finally:
        server.start()
    assert server.endpoint_url == endpoint
    # the cached filesystem instance (with stale pooled connections) keeps working
    with fsspec.open(f"s3://{bucket}/keep.txt", "rb") as f:
        assert f.read() == b"survives restart"
    with fsspec.open(f"s3://{bucket}/after.txt", "wb") as f:
        f.write(b"written after restart")
    assert server.filesystem().cat(f"{bucket}/after.txt") == b"written after restart"


# --------------------------------------------------------------------------- GCS


def test_gcs_env_roundtrip_and_list(gcs_env):
    server = gcs_env
    bucket = server.make_bucket(_bucket("rt"))
    _write_read_list("gs", bucket)
    import gcsfs.core

    # the plain HTTP filesystem, not gcsfs' ExtendedGcsFileSystem (see GCSServer.env)
    assert type(fsspec.filesystem("gs")) is gcsfs.core.GCSFileSystem
    assert server.filesystem().cat(f"{bucket}/images/b.bin") == b"b.bin"


def test_gcs_stop_start_preserves_objects(gcs_env):
    server = gcs_env
    bucket = server.make_bucket(_bucket("restart"))
    with fsspec.open(f"gs://{bucket}/keep.txt", "wb") as f:
        f.write(b"survives restart")
    server.stop()
    try:
        assert not server.running and _refused(server.port)
    finally:
        server.start()
    with fsspec.open(f"gs://{bucket}/keep.txt", "rb") as f:
        assert f.read() == b"survives restart"
    with fsspec.open(f"gs://{bucket}/after.txt", "wb") as f:
        f.write(b"written after restart")
    assert server.filesystem().cat(f"{bucket}/after.txt") == b"written after restart"


# --------------------------------------------------------------------------- both


def test_fresh_process_env_only(s3_server, gcs_server):
    """A new interpreter (like a Ray worker) needs nothing but the env vars."""
    s3_bucket = s3_server.make_bucket(_bucket("proc"))
    gcs_bucket = gcs_server.make_bucket(_bucket("proc"))
    s3_server.filesystem().pipe(f"{s3_bucket}/in.txt", b"s3 in")
    gcs_server.filesystem().pipe(f"{gcs_bucket}/in.txt", b"gs in")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "FSSPEC_", "GCSFS_", "STORAGE_EMULATOR", "GOOGLE_"))
    }
    env.update(s3_server.env())
    env.update(gcs_server.env())
    script = textwrap.dedent(
        f"""
        import fsspec, gcsfs.core
        for url in ("s3://{s3_bucket}", "gs://{gcs_bucket}"):
            with fsspec.open(url + "/in.txt", "rb") as f:
                data = f.read()
            with fsspec.open(url + "/out.txt", "wb") as f:
                f.write(data + b" out")
        assert type(fsspec.filesystem("gs")) is gcsfs.core.GCSFileSystem
        """
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    assert s3_server.filesystem().cat(f"{s3_bucket}/out.txt") == b"s3 in out"
    assert gcs_server.filesystem().cat(f"{gcs_bucket}/out.txt") == b"gs in out"
