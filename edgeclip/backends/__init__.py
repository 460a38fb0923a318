"""Backend registry: name → module, derived from the one description of each backend
(``catalog.SPECS``). Adding a backend = one module + one ``BackendSpec``."""

from __future__ import annotations

import importlib
from functools import cache

from ..errors import BackendUnavailableError, InputError
from .base import Backend, Session
from .catalog import ALIASES, PREFERENCE
from .catalog import MODULES as BACKENDS


def canonical_name(name: str) -> str:
    """Map an alias to its backend name; unknown names raise ``InputError`` listing the known ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BACKENDS:
        raise InputError(
            f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)} "
            f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})."
        )
    return key


@cache
def get_backend(name: str) -> Backend:
    """The backend object for ``name``; raises ``BackendUnavailableError`` naming the extra."""
    key = canonical_name(name)
    try:
        module = importlib.import_module(BACKENDS[key])
    except ModuleNotFoundError as exc:
        raise BackendUnavailableError(
            f"backend {key!r} is not part of this edgeclip build ({exc})."
        ) from exc
    backend = module.Backend()
    if not backend.is_available():
        raise BackendUnavailableError(
            f"backend {key!r} is not installed; install it with `pip install edgeclip[{backend.extra}]`."
        )
    return backend


def available_backends() -> list[str]:
    """Names of the backends whose runtime is installed on this host, in auto-preference order."""
    names = []
    for key in PREFERENCE:
        try:
            get_backend(key)
        except (BackendUnavailableError, ImportError):
            continue
        names.append(key)
    return names


__all__ = ["BACKENDS", "Backend", "Session", "available_backends", "canonical_name", "get_backend"]
