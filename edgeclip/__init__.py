"""edgeclip: zero-shot vision on the edge with small CLIP models.

    >>> import edgeclip
    >>> model = edgeclip.load("tinyclip-8m")
    >>> model.classify("cat.jpg", ["cat", "dog", "car"], top_k=3)

``import edgeclip`` imports no torch, transformers or backend runtime: everything heavy loads
lazily on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .errors import (  # noqa: E402  (light, always needed)
    BackendUnavailableError,
    BatchError,
    EdgeclipError,
    GraphOpenError,
    InputError,
    IntegrityError,
    ModelNotFoundError,
)

_LAZY = {
    "load": ("edgeclip.loader", "load"),
    "EdgeClip": ("edgeclip.model", "EdgeClip"),
    "Bundle": ("edgeclip.bundle", "Bundle"),
    "available_backends": ("edgeclip.backends", "available_backends"),
    "list_models": ("edgeclip.zoo", "list_models"),
    "get_model_info": ("edgeclip.zoo", "get_model_info"),
    "tokenize": ("edgeclip.tokenizer", "tokenize"),
    "Tokenizer": ("edgeclip.tokenizer", "Tokenizer"),
    "load_image": ("edgeclip.images", "load_image"),
    "Preprocessor": ("edgeclip.preprocess", "Preprocessor"),
    "VerificationError": ("edgeclip.verify", "VerificationError"),
    "verify_bundle": ("edgeclip.selection", "verify_all"),
    "Index": ("edgeclip.index", "Index"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgeclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "BackendUnavailableError",
    "BatchError",
    "EdgeclipError",
    "GraphOpenError",
    "InputError",
    "IntegrityError",
    "ModelNotFoundError",
    "__version__",
    *_LAZY,
]
