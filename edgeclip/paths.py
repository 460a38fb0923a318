"""Where edgeclip keeps what it builds (downloads themselves live in the Hugging Face cache)."""

from __future__ import annotations

import os
from pathlib import Path

from . import settings


def edgeclip_home() -> Path:
    """``$EDGECLIP_HOME``, else ``$XDG_CACHE_HOME/edgeclip`` (``~/.cache/edgeclip``)."""
    env = settings.get("EDGECLIP_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "edgeclip"


def bundles_dir() -> Path:
    """Bundles built from zoo models: ``$EDGECLIP_CACHE``, else ``edgeclip_home()/bundles``."""
    env = settings.get("EDGECLIP_CACHE")
    return Path(env).expanduser() if env else edgeclip_home() / "bundles"


def converted_dir() -> Path:
    """Bundles converted on the fly from checkpoint directories given to ``edgeclip.load``."""
    return edgeclip_home() / "converted"


def default_index() -> Path:
    """The photo index used without ``--db``: ``$EDGECLIP_DB``, else
    ``$XDG_DATA_HOME/edgeclip/photos.db`` (``~/.local/share/edgeclip/photos.db``). Data, not
    cache: an index costs hours of embedding and must survive a cache clean-up."""
    env = settings.get("EDGECLIP_DB")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "edgeclip" / "photos.db"


def check_output_folder(path: str | os.PathLike, flag: str, example: str) -> Path:
    """An output folder that exists or can be made: named, not a file, not under a file, and
    with a writable nearest existing ancestor (where it gets made). ``InputError`` naming
    ``flag`` otherwise, before any long work writes into it."""
    from .errors import InputError

    if not str(path).strip():
        raise InputError(f"{flag} is empty; name a folder, e.g. {flag} {example}.")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder; name a folder to write into, "
                         f"e.g. {flag} {example}.")  # fmt: skip
    near = out
    while not near.exists() and near != near.parent:
        near = near.parent
    if not near.is_dir():
        raise InputError(f"{flag} {path}: {near} is a file, so no folder can be made under it; "
                         f"pick another {flag}.")  # fmt: skip
    if not os.access(near, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: folder {near} is not writable; pick another {flag}.")
    return out

