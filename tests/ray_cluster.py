"""A real multi-node Ray cluster on this machine (`ray start --head` plus worker nodes), stopped on exit."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalCluster:
    address: str
    env: dict[str, str]  # what a driver needs to join (Ray 2.60 heads require a token)
    worker_ports: list[int]  # node-manager port of each worker node, to find (and kill) its raylet

    def kill_worker_node(self, index: int = 0) -> int:
        """SIGKILL the raylet of worker node `index` (its workers die with it); returns how many processes."""
        port = self.worker_ports[index]
        found = subprocess.run(["pgrep", "-f", f"raylet.*node_manager_port={port}"], capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split()]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return len(pids)


@contextlib.contextmanager
def local_cluster(head_cpus: int, worker_cpus: list[int]) -> Iterator[LocalCluster]:
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's Unix socket paths must stay under 108 bytes
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_bin, "start", "--head", f"--port={port}", f"--num-cpus={head_cpus}",
                        "--include-dashboard=false", f"--temp-dir={temp}", *common],
                       check=True, env=env, capture_output=True, timeout=120)
        worker_ports = []
        for cpus in worker_cpus:
            worker_ports.append(free_port())
            subprocess.run([ray_bin, "start", f"--address=127.0.0.1:{port}", f"--num-cpus={cpus}",
                            f"--node-manager-port={worker_ports[-1]}", f"--temp-dir={temp}", *common],
                           check=True, env=env, capture_output=True, timeout=120)
        total = f"/{float(head_cpus + sum(worker_cpus))} CPU"
        deadline = time.time() + 90
        status = ""
        while total not in status and time.time() < deadline:
            status = subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"], env=env,
                                    capture_output=True, text=True).stdout
            time.sleep(1)
        assert total in status, f"the worker nodes never joined:\n{status}"
        yield LocalCluster(f"127.0.0.1:{port}", env, worker_ports)
    finally:
        stop_processes_under(temp)  # never `ray stop`: it kills every Ray on the machine, not only ours
        shutil.rmtree(temp, ignore_errors=True)


def stop_processes_under(temp: str) -> int:
    """SIGKILL every process whose command line names `temp` (this cluster's own daemons and workers only)."""
    killed = 0
    for _ in range(3):  # daemons can spawn a last worker while we kill: sweep until none is left
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if temp.encode() in handle.read():
                        pids.append(int(entry))
            except OSError:
                continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        if not pids:
            break
        time.sleep(0.5)
    return killed
