"""Where an index lives: the ``--db`` path checked before SQLite touches it, and the OS and
SQLite errors of writing it turned into messages that name the file and the fix.

SQLite's own words ("unable to open database file", "attempt to write a readonly database",
"database or disk is full") say neither which file nor what to do, and "disk is full" once
came out as "corrupt: delete it", which would throw away every committed vector.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from edgeclip.errors import EdgeclipError

__all__ = ["IndexFileError", "check_location", "check_readable", "describe", "has_wal",
           "unreadable_wal", "wal_in_readonly_folder", "writable"]

_SQLITE_MAGIC = b"SQLite format 3\x00"
# The files SQLite and edgeclip write next to photos.db; each must be writable by a writer.
_SIDE_FILES = ("-wal", "-shm", ".lock")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class IndexFileError(EdgeclipError):
    """The index file is not an edgeclip index, is corrupt, or cannot be written where it is."""


def check_readable(path: Path) -> None:
    """Refuse a folder, an unreadable file or a file that is not SQLite, before opening it."""
    if path.is_dir():
        raise IndexFileError(
            f"--db {path} is a folder; give the index's file name, for example "
            f"--db {path / 'photos.db'}."
        )
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise IndexFileError(
            f"cannot read the index {path}: {e.strerror or e}; check its permissions."
        ) from e
    if head != _SQLITE_MAGIC:
        raise IndexFileError(
            f"{path} is not an edgeclip index (it is not an SQLite database); pass a new --db "
            "path: edgeclip never overwrites a file it did not create."
        )


def writable(path: Path | str, mode: int = os.W_OK) -> bool:
    eff = os.access in os.supports_effective_ids  # a setuid/seteuid process: its effective ids
    return os.access(path, mode, effective_ids=eff)


def check_location(path: Path) -> None:
    """A writer needs the folder and every file of the index to be writable: checked up front,
    so a run does not embed for an hour and then fail at its first commit."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise IndexFileError(
            f"cannot create the index {path}: {folder} is a file, not a folder; pass another "
            "--db path."
        )
    if not folder.exists():
        raise IndexFileError(
            f"cannot create the index {path}: the folder {folder} does not exist; create it "
            f"(mkdir -p '{folder}') or pass another --db path."
        )
    if not writable(folder, os.W_OK | os.X_OK):
        raise IndexFileError(
            f"cannot write the index {path}: its folder {folder} is read-only; pass --db "
            "somewhere writable (searching a read-only index works)."
        )
    for f in [path] + [Path(f"{path}{s}") for s in _SIDE_FILES] + _vector_files(path):
        if f.exists() and not writable(f) and not _own_side_file_fixed(path, f):
            raise IndexFileError(
                f"cannot write the index {path}: {f} is read-only for this user (owner uid "
                f"{f.stat().st_uid}; a run as another user, e.g. with sudo, may have left it); "
                "give it back with chown or chmod u+w, or pass --db somewhere writable "
                "(searching a read-only index works)."
            )


def _own_side_file_fixed(db: Path, f: Path) -> bool:
    """SQLite gives -wal and -shm the database's mode when it creates them, so a search while
    photos.db was read-only leaves them read-only after photos.db is writable again. Ours, next
    to a writable database: given the database's mode again."""
    if f.name not in (f"{db.name}-wal", f"{db.name}-shm") or not writable(db):
        return False
    try:
        if f.stat().st_uid != os.geteuid():
            return False
        os.chmod(f, db.stat().st_mode & 0o666)
    except OSError:
        return False
    return writable(f)


def _vector_files(path: Path) -> list[Path]:
    prefixes = (f"{path.name}.vectors-", f"{path.name}.ann-")
    try:
        return [path.parent / n for n in os.listdir(path.parent) if n.startswith(prefixes)]
    except OSError:
        return []


def has_wal(path: Path) -> bool:
    """Whether ``photos.db-wal`` holds anything: commits a checkpoint may not have copied into
    ``photos.db`` yet (a writer is running, or was killed)."""
    try:
        return os.path.getsize(f"{path}-wal") > 0
    except OSError:
        return False


def wal_in_readonly_folder(path: Path) -> bool:
    return has_wal(path) and not writable(path.parent)


def unreadable_wal(path: Path, e: BaseException) -> IndexFileError:
    """A reader in a read-only folder that SQLite could not give the -wal's commits (it needs
    the -shm beside them, and cannot create one there). The index itself is fine."""
    return IndexFileError(
        f"cannot read the index {path}: {path.name}-wal holds commits not yet folded into "
        f"{path.name} (an `edgeclip index` is running on it, or was killed), and SQLite cannot "
        f"read them from the read-only folder {path.parent} ({e}). Search it through a "
        "writable path, or after the writer has finished, or once a run of `edgeclip index` "
        "from a writable path has folded them in."
    )


def describe(path: Path, e: BaseException) -> IndexFileError:
    """An error from writing or reading the index at ``path`` as a message with its fix."""
    text = str(e)
    code = getattr(e, "errno", None)
    if code in _FULL_ERRNOS or "disk is full" in text or getattr(e, "sqlite_errorname", "") == "SQLITE_FULL":
        return IndexFileError(
            f"cannot write the index {path}: the disk is full ({text}); free some space on it "
            f"(df -h '{path.parent}') and run again (what was committed is kept)."
        )
    if getattr(e, "sqlite_errorname", "").startswith("SQLITE_IOERR") or "disk I/O error" in text:
        return IndexFileError(
            f"cannot read or write the index {path}: {text}; the disk may be full, failing (an "
            "SD card: see dmesg) or a network mount that went away; check it (df -h "
            f"'{path.parent}') and run again (what was committed is kept)."
        )
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in text or "unable to open" in text:
        return IndexFileError(
            f"cannot write the index {path} ({text}); its folder and files must be writable: "
            "pass --db somewhere you can write."
        )
    if isinstance(e, OSError):
        return IndexFileError(
            f"cannot write the index {path} ({text}); once that is fixed, run again (what was "
            "committed is kept)."
        )
    if isinstance(e, sqlite3.OperationalError) and "locked" in text:
        return IndexFileError(
            f"the index {path} stayed locked by another process for 30 s ({text}); let it "
            "finish, then run again."
        )
    return IndexFileError(
        f"the index {path} is corrupt or not an edgeclip index ({text}); move it away "
        "or delete it (and its -wal, -shm and .vectors files), then run `edgeclip index` again."
    )
