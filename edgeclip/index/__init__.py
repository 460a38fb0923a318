"""Photo library search: ``edgeclip index`` / ``search`` / ``dupes`` and the ``Index`` API.

    >>> from edgeclip.index import Index
    >>> ix = Index("photos.db", model="tinyclip-8m")
    >>> report = ix.update(["~/Pictures"], exclude=["*/tmp/*"])
    >>> ix.search("a red bicycle", k=10)          # [Hit(path, score), ...]
    >>> ix.search(pathlib.Path("query.jpg"))      # by example
    >>> ix.duplicates(0.95)                       # [[Hit, Hit, ...], ...]

See docs/index.md. Importing this package loads nothing heavy: numpy, Pillow and usearch
load with ``Index``.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Index": ("edgeclip.index.library", "Index"),
    "Hit": ("edgeclip.index.library", "Hit"),
    "Report": ("edgeclip.index.indexer", "Report"),
    "IndexFileError": ("edgeclip.index.store", "IndexFileError"),
    "IndexLockedError": ("edgeclip.index.store", "IndexLockedError"),
    "ModelMismatchError": ("edgeclip.index.store", "ModelMismatchError"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgeclip.index' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
