"""Progress of a run in images (not Ray blocks): a bar on a terminal, a line every `every` seconds in logs."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("vitpose_batch")


SHOW_READS = False  # set by the command line: commands that stream an OUTPUT's parts show how far they are


class Progress:
    """Counts `what` done of `total` (None: unknown); a tqdm bar on a terminal, else a log line every `every` s."""

    def __init__(self, total: int | None, what: str = "images", every: float = 30.0) -> None:
        self.total, self.what, self.every = total, what, every
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=" " + what, dynamic_ncols=True)

    def update(self, n: int, note: str | None = None) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / (now - self.start)
            of = f" of {self.total:,}" if self.total else ""
            eta = f", about {(self.total - self.done) / rate / 60:.0f} min left" if self.total and rate else ""
            log.info("%s: %s%s (%.1f/s)%s%s", self.what, f"{self.done:,}", of, rate, eta, f", {note}" if note else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def reading(tables, files: int):
    """Pass an OUTPUT's part tables through, showing part files read of `files` and the images in them, when the
    command line asked for it (SHOW_READS) and there is more than one file."""
    if not SHOW_READS or files < 2:
        yield from tables
        return
    progress = Progress(files, what="part files")
    images = 0
    try:
        for table in tables:
            images += table.num_rows
            progress.update(1, f"{images:,} images")
            yield table
    finally:
        progress.close()
