"""Ctrl-C and SIGTERM stop a job cleanly: the signal becomes a `Stopped` exception in the main thread, the run
commits what arrived, records how it ended and releases OUTPUT; the CLI prints one line and exits 128 + signal."""

from __future__ import annotations

import os
import signal
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """The job was asked to stop (BaseException: no `except Exception` on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


DUPLICATE_WINDOW_S = 2.0
_first: dict[str, float] = {}


def _raise(signum, frame) -> None:
    _first.update(signum=signum, at=time.monotonic())
    for stop in STOP_SIGNALS:
        signal.signal(stop, _again)
    raise Stopped(signum)


def _again(signum, frame) -> None:
    """A signal while stopping. Ctrl-C reaches every process of the terminal's group, so the job gets it both from
    the terminal and forwarded by its watching parent (vitpose_batch.pipeline.supervisor): that duplicate is ignored. Any other
    signal stops the job at once, the default way."""
    if signum == _first.get("signum") and time.monotonic() - _first["at"] < DUPLICATE_WINDOW_S:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_installed = False


def install() -> None:
    """Turn SIGINT / SIGTERM into Stopped (main thread only; the CLI calls it, library users keep theirs)."""
    global _installed
    for stop in STOP_SIGNALS:
        signal.signal(stop, _raise)
    _installed = True


def reinstall() -> None:
    """After a library (Ray) installed handlers of its own, put ours back if the CLI asked for them."""
    if _installed and signal.getsignal(signal.SIGTERM) is not _raise:
        install()
