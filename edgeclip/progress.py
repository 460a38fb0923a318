"""Progress for people: a tqdm bar on a terminal; in a log (stderr not a TTY), a plain line every
few percent and whenever the status text changes, never thousands of carriage returns."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LogProgress:
    """The tqdm calls edgeclip uses (update, set_description, set_postfix_str, write, close)."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", every: float = 0.05,
                 file: TextIO | None = None):  # fmt: skip
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.postfix, self.disable = 0, "", False
        self._file = file or sys.stderr
        self._last_shown, self._start = -1.0, time.monotonic()

    def _line(self) -> str:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({self.n / self.total:.0%})" if self.total else ""
        rate = self.n / max(time.monotonic() - self._start, 1e-9)
        tail = f" {self.postfix}" if self.postfix else ""
        return f"{self.desc + ': ' if self.desc else ''}{done} {self.unit}{pct}, {rate:.3g} {self.unit}/s{tail}"

    def _show(self, force: bool = False) -> None:
        frac = self.n / self.total if self.total else float(self.n)
        if force or self._last_shown < 0 or frac - self._last_shown >= self.every or (
            self.total and self.n >= self.total and self._last_shown < 1
        ):
            print(self._line(), file=self._file, flush=True)
            self._last_shown = frac

    def update(self, n: int = 1) -> None:
        self.n += n
        self._show()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        if desc != self.desc:
            self.desc = desc

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        if text != self.postfix:
            self.postfix = text
            self._show(force=True)

    def write(self, message: str) -> None:
        print(message, file=self._file, flush=True)

    def close(self) -> None:
        if self.total and self.n and self._last_shown < 1:
            self._show(force=True)


def progress(total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool | None = None, file: TextIO | None = None) -> Any:  # fmt: skip
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a ``LogProgress``.

    ``enabled=False`` gives a silent one; ``True`` forces output even when piped.
    """
    stream = file or sys.stderr
    if enabled is False:
        quiet = LogProgress(total, desc, unit, file=stream)
        quiet.disable = True
        quiet._show = lambda force=False: None  # type: ignore[method-assign]
        quiet.write = lambda message: None  # type: ignore[method-assign]
        return quiet
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LogProgress(total, desc, unit, file=stream)
