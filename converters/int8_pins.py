"""Pinned INT8 configurations: ``--int8-config openvino=ptq-mlp-only`` skips a backend's search.

A backend's ``int8`` is normally a search over its module's ``INT8_CANDIDATES``, fastest first,
keeping the first that passes the gate. Pinning one configuration builds and gates only that
one: for a user who already knows which configuration holds for their model on their CPUs (the
search's record, ``options.search``, says which), and for a speed fixture that must time the
configuration a trained model's gate kept on the host (``benchmarks/host_sweep.sh``). A pinned
configuration is still gated; if it fails, the variant is rejected as any other, unless
``fallback`` (``--int8-fallback``) lets the rest of the search go on after it, in its order.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from edgeclip.backends import catalog
from edgeclip.errors import InputError

__all__ = ["candidates", "config_names", "parse_int8_configs"]

Candidate = tuple[str, str, dict[str, Any]]


def config_names(backend: str) -> list[str]:
    """The INT8 configurations ``backend`` searches, fastest first ([] if it has no search)."""
    module = catalog.search_modules().get(backend)
    if module is None:
        return []
    return [name for name, _, _ in importlib.import_module(f"converters.{module}").INT8_CANDIDATES]


def parse_int8_configs(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"onnx=dynamic-per-tensor,openvino=ptq-mlp-only"`` (or a dict) → validated pins.

    Unknown backends, backends without an INT8 search and unknown configurations raise
    ``InputError`` naming the choices, before anything is converted.
    """
    if not spec:
        return {}
    pairs = spec.items() if isinstance(spec, Mapping) else (_split(p) for p in spec.split(","))
    pins: dict[str, str] = {}
    for backend, config in pairs:
        backend = catalog.ALIASES.get(backend.strip().lower(), backend.strip().lower())
        names = config_names(backend)
        if not names:
            searched = ", ".join(sorted(catalog.search_modules()))
            raise InputError(f"--int8-config: {backend!r} has no INT8 search to pin; "
                             f"backends with one: {searched}.")  # fmt: skip
        if config.strip() not in names:
            raise InputError(f"--int8-config: {backend} has no INT8 configuration "
                             f"{config.strip()!r}; choose from: {', '.join(names)}.")  # fmt: skip
        pins[backend] = config.strip()
    return pins


def _split(item: str) -> tuple[str, str]:
    backend, sep, config = item.partition("=")
    if not sep or not backend.strip() or not config.strip():
        raise InputError(f"--int8-config: {item!r} is not BACKEND=CONFIG, e.g. "
                         "openvino=ptq-mlp-only (several: comma-separated).")  # fmt: skip
    return backend, config


def candidates(module: Any, pinned: str | None, fallback: bool = False) -> list[Candidate]:
    """The candidates to try: all of ``module.INT8_CANDIDATES``, or only the pinned one (with
    ``fallback``: the pinned one first, then the others in the search's order)."""
    every: list[Candidate] = list(module.INT8_CANDIDATES)
    if pinned is None:
        return every
    chosen = [c for c in every if c[0] == pinned]
    if not chosen:  # parse_int8_configs checks names first; a direct caller may not have
        raise InputError(f"no INT8 configuration {pinned!r}; choose from: "
                         f"{', '.join(c[0] for c in every)}.")  # fmt: skip
    return chosen + [c for c in every if c[0] != pinned] if fallback else chosen
