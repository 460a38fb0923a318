"""The one hook from the runtime to the stages above it (convert, bench, distill).

Layers point down: ``edgeclip`` (the runtime) imports nothing from ``converters/``,
``benchmarks/`` or ``edgeclip/distill/``. Where the runtime offers an upper stage (loading a
checkpoint directory converts it; ``edgeclip convert|bench|distill`` on the command line), it
looks the stage up here, by the entry points of group ``edgeclip.stages`` that the package
declares (setup.cfg). A stage whose packages are missing gives an error naming the extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import BackendUnavailableError

GROUP = "edgeclip.stages"
#: stage → the pip extra that makes it work
EXTRAS = {"convert": "convert", "convert-cli": "convert", "bench": "bench", "distill": "distill"}


def stage(name: str) -> Callable[..., Any]:
    """The callable behind stage ``name``; ``BackendUnavailableError`` if it cannot load here."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    extra = EXTRAS.get(name, name)
    if not found:
        raise BackendUnavailableError(
            f"edgeclip {name} is not part of this installation (no {GROUP} entry point); "
            f"install it with `pip install edgeclip[{extra}]`."
        )
    try:
        return found[0].load()
    except ImportError as exc:
        raise BackendUnavailableError(
            f"edgeclip {name} needs packages that are not installed ({exc}); "
            f"`pip install edgeclip[{extra}]`."
        ) from exc
