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
