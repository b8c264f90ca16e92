"""Ctrl-C and SIGTERM stop a job cleanly: the signal becomes a `Stopped` exception in the main thread, the run
commits what arrived, records how it ended and releases OUTPUT; the CLI prints one line and exits 128 + signal."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """The job was asked to stop (BaseException: no `except Exception` on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum, frame) -> None:
    for stop in STOP_SIGNALS:  # a second signal while stopping: the default, immediate behaviour
        signal.signal(stop, signal.SIG_DFL)
    raise Stopped(signum)


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
