"""Every error edgeclip raises is an ``EdgeclipError``: it names the input and says how to fix it."""

from __future__ import annotations

from typing import Any


class EdgeclipError(Exception):
    """Base class of edgeclip's errors."""


class InputError(EdgeclipError, ValueError):
    """A bad argument: an unreadable image, an empty label list, an unknown name.

    ``param`` names the offending argument where one item of a list is at fault
    (``labels[2]``), so a server can point its client at the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFoundError(EdgeclipError, LookupError):
    """A model name that is neither in the zoo nor a directory, or files that cannot be fetched."""


class IntegrityError(EdgeclipError):
    """A file whose sha256 or size differs from the one recorded for it."""


class GraphOpenError(EdgeclipError, RuntimeError):
    """A graph file its backend cannot open here: damaged, or built for another runtime."""


class BackendUnavailableError(EdgeclipError, ImportError):
    """A backend that is not installed; the message names the pip extra that installs it."""


class BatchError(EdgeclipError):
    """Some inputs of a batch failed; the good ones are not lost.

    ``results`` holds what the call would have returned with the failed rows left as NaN
    (for embeddings) or ``None`` (for per-item results); ``failures`` maps each failed
    input's index to the reason; ``ok`` is a boolean mask of the rows that succeeded.
    """

    def __init__(self, what: str, failures: dict[int, str], results: Any, total: int):
        self.failures = dict(failures)
        self.results = results
        self.total = total
        self.ok = [i not in self.failures for i in range(total)]
        lines = [f"  input {i}: {reason}" for i, reason in sorted(self.failures.items())]
        super().__init__(
            f"{len(self.failures)} of {total} {what} failed (the other {total - len(self.failures)} "
            f"succeeded; their results are in this error's .results):\n" + "\n".join(lines)
        )
