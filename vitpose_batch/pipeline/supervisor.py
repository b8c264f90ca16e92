"""`vitpose-batch annotate` runs the job in a child process and watches it.

When Ray's raylet, GCS or object store dies, Ray's native core worker ends the driver process at once (exit 1, no
Python code runs), so the job itself cannot say what happened. The parent here can: it forwards SIGINT / SIGTERM to
the child, and when the child ends without a status of its own (0 done, 2 refused or failed, 130 / 143 stopped) it
prints one line saying so. The child dies with its parent (PR_SET_PDEATHSIG), so killing the command kills the job.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

SUPERVISED = "VITPOSE_SUPERVISED"
OWN_STATUSES = (0, 2, 128 + signal.SIGINT, 128 + signal.SIGTERM)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the child outlives a killed parent, as any process would


def supervise(argv: list[str]) -> int:
    """Run `python -m vitpose_batch.cli *argv` as a watched child; its exit status, or one line of ours and 1."""
    env = dict(os.environ, **{SUPERVISED: "1"})
    child = subprocess.Popen([sys.executable, "-m", "vitpose_batch.cli", *argv], env=env, preexec_fn=_die_with_parent)

    def forward(signum, frame) -> None:
        # A signal sent to this command alone must reach the job. Ctrl-C reaches the job from the terminal as well:
        # the job ignores that duplicate (vitpose_batch.pipeline.signals).
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if status in OWN_STATUSES:
        return status
    if status < 0:
        name = signal.Signals(-status).name
        print(f"vitpose-batch {argv[0]}: error: the job process was killed by {name}; rows committed so far are "
              "safe under OUTPUT and the same command resumes from them", file=sys.stderr)
        return 128 - status
    print(f"vitpose-batch {argv[0]}: error: the job process ended with status {status} and no word of its own, "
          "which is how Ray ends a driver whose raylet, GCS or object store died; rows committed so far are safe "
          "under OUTPUT and the same command resumes from them", file=sys.stderr)
    return status
