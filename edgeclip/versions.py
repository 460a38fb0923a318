"""Installed package versions, read from their ``.dist-info`` folders.

``importlib.metadata`` imports ``email`` and friends, 35 ms of every cold start on a 2-core Xeon;
the verdict cache and the compiled-model caches only need a version string, which the folder's
name gives (``NAME-VERSION.dist-info``, as wheels, conda and editable installs write it).
"""

from __future__ import annotations

import os
import re
import sys
from functools import cache


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


@cache
def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (``onnxruntime``, ``ai-edge-litert``), or
    None when no ``.dist-info`` / ``.egg-info`` folder on ``sys.path`` names it."""
    wanted = _normalise(name)
    for entry in sys.path:
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in listing:
            stem, _, ext = folder.rpartition(".")
            if ext not in ("dist-info", "egg-info"):
                continue
            # NAME-VERSION.dist-info; NAME-VERSION[-pyX.Y].egg-info (names use '_' for '-')
            dist, _, rest = stem.partition("-")
            version = rest.split("-")[0]
            if version and _normalise(dist) == wanted:
                return version
    return None
