"""Progress of a run in images (not Ray blocks): a bar on a terminal, a line every `every` seconds in logs."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("vitpose_batch")


class Progress:
    def __init__(self, total: int | None, what: str = "images", every: float = 30.0) -> None:
        self.total, self.what, self.every = total, what, every
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=" " + what, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / (now - self.start)
            of = f" of {self.total:,}" if self.total else ""
            eta = f", about {(self.total - self.done) / rate / 60:.0f} min left" if self.total and rate else ""
            log.info("%s: %s%s (%.1f/s)%s", self.what, f"{self.done:,}", of, rate, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
