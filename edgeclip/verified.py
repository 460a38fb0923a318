"""Hash a file once: a small marker remembers its sha256 with the size and mtime it had then.

Later checks compare size and mtime only, so a 100 MB graph is not re-hashed on every load; a
file that changed (new mtime or size) is hashed again. Markers are best effort: an unwritable
location only means hashing next time too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _recorded(marker: Path, stat: os.stat_result) -> dict | None:
    """The marker's record when it matches this size and mtime, else None."""
    try:
        seen = json.loads(marker.read_text())
        if seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns:
            return seen
    except (OSError, ValueError, AttributeError):
        pass
    return None


def is_verified(marker: Path, stat: os.stat_result, sha256: str | None = None) -> bool:
    """True when ``marker`` records this size and mtime (and ``sha256``, if given)."""
    seen = _recorded(marker, stat)
    return seen is not None and (sha256 is None or seen.get("sha256") == sha256)


def remember(marker: Path, stat: os.stat_result, sha256: str) -> None:
    """Record that the file with this size and mtime has ``sha256``."""
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps({"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        )
        os.replace(tmp, marker)
    except OSError:
        pass


def marker_for(path: Path) -> Path:
    """The marker of one file, by its resolved path, under ``edgeclip_home()/verified``."""
    import hashlib

    from .paths import edgeclip_home

    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
    return edgeclip_home() / "verified" / f"{key}.json"


def known_sha256(path: Path) -> str:
    """The file's sha256, hashed only when its size or mtime changed since the last time."""
    from .bundle import sha256_file

    stat, marker = Path(path).stat(), marker_for(path)
    seen = _recorded(marker, stat)
    if seen is not None and isinstance(seen.get("sha256"), str):
        return seen["sha256"]
    digest = sha256_file(path)
    remember(marker, stat, digest)
    return digest
