"""Progress of ``edgeclip index`` for people: a tqdm bar on a terminal, plain lines in a log."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

__all__ = ["Progress"]


def _has_size(stream: Any) -> bool:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return size.columns > 0 and size.lines > 0


class Progress:
    """A tqdm bar (count, rate, ETA) on a terminal; elsewhere a line every 5 % (at most one
    each 2 s) or 30 s.

    The total comes from a background count of the tree, so the bar starts at once and its
    total grows until the count is final.
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm

            # A terminal that reports no size (a serial console, `script`, some ssh sessions)
            # makes tqdm draw nothing at all: give it one.
            sized = _has_size(self.stream)
            self.bar = tqdm(total=None, unit=" files", file=self.stream, dynamic_ncols=sized,
                            ncols=None if sized else 80, nrows=None if sized else 24)  # fmt: skip
        self.t0: float | None = None  # set by the first file, so model loading is not counted
        self.done0 = 0
        self.next_line = 0.0
        self.last_t = 0.0

    def __call__(self, done: int, total: int, final: bool) -> None:
        if self.t0 is None:  # the first batch arrives at once: rates count from after it
            self.t0 = self.last_t = time.monotonic()
            self.done0 = done
        if self.bar is not None:
            if total != self.bar.total:
                self.bar.total = total
                self.bar.set_description("indexing" if final else "indexing (counting)")
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        due = final and done >= self.next_line and (done == total or now - self.last_t >= 2)
        if due or now - self.last_t >= 30:
            self._line(done, total, final, now)

    def _line(self, done: int, total: int, final: bool, now: float) -> None:
        elapsed = now - (self.t0 or now)
        rate = (done - self.done0) / elapsed if elapsed > 0 and done > self.done0 else 0.0
        eta = f", ETA {(total - done) / rate:.0f} s" if final and rate > 0 else ""
        of = f"/{total} ({100 * done / max(total, 1):.0f} %)" if final else ""
        speed = f", {rate:.1f} files/s" if rate > 0 else ""
        print(f"indexed {done}{of} files{speed}{eta}", file=self.stream, flush=True)
        self.next_line = done + max(1, total // 20)
        self.last_t = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
