"""Ray for the job: join a cluster or start one in this process, quietly; what travels to a cluster's workers.

Ray's runtime_env is shown by its job metadata and dashboard to anyone who can reach them, so secrets never go
that way: workers read credentials from their own environment (a Kubernetes Secret in the manifests).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

from vitpose_batch.pipeline import signals

# Where workers find object storage and hubs: forwarded to a cluster's workers through runtime_env.
FORWARDED_ENV_PREFIXES = ("AWS_", "GOOGLE_", "STORAGE_EMULATOR_HOST", "FSSPEC_", "GCSFS_", "HF_", "NO_GCE_CHECK",
                          "VITPOSE_")
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|SESSION|AUTH", re.IGNORECASE)


def quiet_ray() -> None:
    """Ray's own chatter off the user's terminal: the job prints its progress, summary and workers' warnings."""
    import ray.data

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the driver's native core worker logs to stderr
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours count images, not blocks
    for name in ["ray", "ray.data", *logging.root.manager.loggerDict]:
        if name == "ray" or name.startswith("ray."):
            # token auth is on, as it should be; progress is ours
            quiet = "authentication" in name or "progress" in name
            logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.WARNING)


# What Ray's native core worker prints at start whatever its log level (it announces that level at INFO).
NATIVE_NOISE = re.compile(r"logging\.cc:\d+: Set ray log level from environment variable")


@contextlib.contextmanager
def native_noise_dropped():
    """Around ray.init: the driver's native stderr (fd 2) goes through a file, and every line but NATIVE_NOISE comes
    back to the terminal afterwards, so a real native error still shows."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 to redirect (an embedded interpreter): leave it alone
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines()
                    if not NATIVE_NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def worker_env(environ: dict[str, str]) -> dict[str, str]:
    """The part of `environ` a cluster's workers get through runtime_env: endpoints and options, never secrets."""
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) and not SECRET_NAME.search(k)}


def connect(address: str | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); otherwise start Ray in this process. A process already
    connected (a library user's, or a test's earlier run) stays connected."""
    import ray

    if ray.is_initialized():
        return
    quiet_ray()
    address = address or os.environ.get("RAY_ADDRESS")
    with native_noise_dropped():
        if address:
            env = worker_env(dict(os.environ))
            ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=False)
        else:
            # In-process Ray: its workers inherit this process's environment, nothing to forward. Loopback only.
            ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    quiet_ray()  # again: ray.init configures loggers of its own
    signals.reinstall()
