"""Hidden folders beside a result while it is written (``.NAME.KIND-HOST-PID-xxxx``), and the
sweep of those a killed process left: the owner in the name tells a leftover (its process on
this host is gone) from another process's folder still in use, with no age to guess. Shared by
the zoo's bundle builds and ``edgeclip convert``'s staging and swap."""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["leftovers", "owner_tag", "scratch_dir"]


def owner_tag() -> str:
    """``HOST-PID`` of this process (the host name hashed, as it may hold a dash)."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"{host}-{os.getpid()}"


def scratch_dir(parent: Path, name: str, kind: str) -> Path:
    """A new ``.NAME.KIND-HOST-PID-xxxx`` folder in ``parent``."""
    return Path(tempfile.mkdtemp(prefix=f".{name}.{kind}-{owner_tag()}-", dir=parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _left_by_the_dead(folder: Path, prefix: str) -> bool:
    parts = folder.name[len(prefix):].split("-")  # HOST, PID, mkdtemp's random part
    ours = owner_tag().split("-")[0]
    return len(parts) == 3 and parts[0] == ours and parts[1].isdigit() and not _alive(int(parts[1]))


def leftovers(parent: Path, name: str, kind: str) -> Iterator[Path]:
    """The ``scratch_dir(parent, name, kind)`` folders whose process, on this host, is gone;
    none on Windows, where ``os.kill(pid, 0)`` would end the process."""
    if os.name == "nt":
        return
    prefix = f".{name}.{kind}-"
    for folder in parent.glob(glob.escape(prefix) + "*"):
        if folder.is_dir() and not folder.is_symlink() and _left_by_the_dead(folder, prefix):
            yield folder
