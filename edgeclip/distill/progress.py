"""Progress output that reads well in a terminal and in a log file.

On a terminal: a tqdm bar. Anywhere else (a pipe, a file, CI): one plain line every
``every_pct`` percent and at the end, instead of thousands of carriage-return redraws.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``update(n, **fields)`` after each step; ``close()`` at the end (also a context manager)."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "",
        stream: TextIO | None = None,
        every_pct: float = 5.0,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.done, self.desc = total, initial, desc
        self.every = max(1, int(round(total * every_pct / 100.0)))
        self.start_done, self.t0 = initial, time.perf_counter()
        self.fields: dict[str, str] = {}
        self.bar = None
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=self.stream)

    def update(self, n: int = 1, **fields) -> None:
        self.done += n
        self.fields.update({k: str(v) for k, v in fields.items()})
        if self.bar is not None:
            self.bar.update(n)
            if fields:
                self.bar.set_postfix(self.fields, refresh=False)
        elif self.done % self.every == 0 or self.done >= self.total:
            self._line()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / max(1, self.total)
        extra = "".join(f" {k}={v}" for k, v in self.fields.items())
        print(f"{self.desc} {self.done}/{self.total} ({pct:.0f}%) {elapsed:.0f}s elapsed, "
              f"{rate:.2f} step/s, eta {eta:.0f}s{extra}", file=self.stream, flush=True)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
