"""The index's metadata in SQLite (WAL): one row per file, the model fingerprint, the writer lock.

SQLite is the commit record of the whole index. A vector is first appended to the vectors file
(``vectors.py``) and synced; only then is the row that points at its slot committed, together
with the new slot count, in one transaction. A kill at any point therefore leaves either the old
state or the new one: rows never point past the committed slots, ``path`` is UNIQUE (no
duplicate rows), and an uncommitted vector tail is cut off by the next writer.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeclip.errors import EdgeclipError, InputError

from .dbpath import (
    IndexFileError,
    check_location,
    check_readable,
    describe,
    has_wal,
    unreadable_wal,
    wal_in_readonly_folder,
    writable,
)

__all__ = [
    "FORMAT", "IndexFileError", "IndexLockedError", "ModelMismatchError", "Row", "Store",
    "WriterLock",
]  # fmt: skip

FORMAT = "edgeclip-index"
SCHEMA_VERSION = 1
# status of a row: an embedded image, an image that could not be read, a file that is no image,
# or an indexed file that was not found by the last walk of its folder.
OK, FAILED, OTHER, MISSING = "ok", "failed", "other", "missing"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    dev INTEGER NOT NULL DEFAULT 0,
    ino INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT,
    status TEXT NOT NULL,
    slot INTEGER UNIQUE,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS files_by_stat ON files (size, mtime_ns);
CREATE INDEX IF NOT EXISTS files_by_hash ON files (sha256) WHERE sha256 IS NOT NULL;
"""


class ModelMismatchError(EdgeclipError):
    """The index was built with another model (bundle, variant or preprocessing)."""


class IndexLockedError(EdgeclipError):
    """Another process is updating the same index."""


@dataclass(frozen=True)
class Row:
    id: int
    path: str
    size: int
    mtime_ns: int
    dev: int
    ino: int
    sha256: str | None
    status: str
    slot: int | None
    reason: str | None


_COLUMNS = "id, path, size, mtime_ns, dev, ino, sha256, status, slot, reason"


class Store:
    """The SQLite side of one index. ``readonly`` opens without creating or writing anything."""

    def __init__(self, path: str | os.PathLike, readonly: bool = False) -> None:
        # Resolved once: SQLite follows a symlinked --db, so the vectors, the -wal and the lock
        # must sit next to the real file too, or the link and the real path are two indexes.
        self.path = Path(os.path.realpath(Path(path).expanduser()))
        self.readonly = readonly
        check_readable(self.path)
        if readonly and not self.path.exists():
            raise self._no_index_yet("")
        if not readonly:
            check_location(self.path)
        self.con = self._connect()
        self._check_format()

    def _no_index_yet(self, why: str) -> InputError:
        return InputError(
            f"no index at {self.path}{why}; build one first with `edgeclip index DIR --db {self.path}`."
        )

    def _open_readonly(self) -> sqlite3.Connection:
        uri = self.path.as_uri() + "?mode=ro"
        if not writable(self.path.parent) and not has_wal(self.path):
            # SQLite cannot make a -shm here; with no -wal there is nothing it would show, so
            # the database file alone is the whole index. With a -wal, immutable would hide its
            # commits (stale results, or "no such table" for an index not yet checkpointed).
            uri += "&immutable=1"
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)

    def _connect(self) -> sqlite3.Connection:
        con = None
        try:
            if self.readonly:
                con = self._open_readonly()
            else:
                con = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            if self.readonly and not tables:  # a zero-byte file, or an index being created
                con.close()
                raise self._no_index_yet(" yet (the file holds no index)")
            # Someone else's SQLite file is refused before anything is written to it.
            if tables and not {"meta", "files"} <= tables:
                con.close()
                raise IndexFileError(
                    f"{self.path} is an SQLite database but not an edgeclip index; pass a new --db path."
                )
            if not self.readonly:
                con.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a power cut may lose the last commits, never consistency.
                con.execute("PRAGMA synchronous=NORMAL")
                con.executescript(_SCHEMA)
                # A write lock now, not at the first commit an hour of embedding later: a
                # -wal or -shm that another user left read-only fails here.
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
        except sqlite3.DatabaseError as e:
            if con is not None:
                con.close()
            raise self.corrupt(e) from e
        return con

    def corrupt(self, e: BaseException) -> IndexFileError:
        if self.readonly and isinstance(e, sqlite3.Error) and wal_in_readonly_folder(self.path):
            return unreadable_wal(self.path, e)
        return describe(self.path, e)

    def _check_format(self) -> None:
        try:
            fmt = self.get_meta("format")
            if fmt is None and not self.readonly and self._is_empty():
                self.set_meta({"format": FORMAT, "schema": str(SCHEMA_VERSION)})
                return
        except sqlite3.DatabaseError as e:
            raise self.corrupt(e) from e
        if fmt != FORMAT:
            raise IndexFileError(
                f"{self.path} is an SQLite database but not an edgeclip index; pass a new --db path."
            )
        self._check_meta()
        schema = int(self.get_meta("schema") or 0)
        if schema > SCHEMA_VERSION:
            raise IndexFileError(
                f"{self.path} was written by a newer edgeclip (index schema {schema}); upgrade edgeclip."
            )

    def _check_meta(self) -> None:
        """Meta values every reader parses: a damaged one is named here, not met later as a
        ValueError (or a usearch assertion) deep inside search."""
        parsed = {}
        for key, parse in (("schema", int), ("slots", int), ("dim", _positive_int),
                           ("generation", int), ("fingerprint", json.loads),
                           ("model", json.loads)):  # fmt: skip
            value = self.get_meta(key)
            try:
                parsed[key] = None if value is None else parse(value)
            except ValueError as e:
                raise self.corrupt(ValueError(f"its {key} is {value[:40]!r}")) from e
        # The vectors are read dim values a row: a dim that is not the model's reads garbage.
        fingerprint, dim = parsed["fingerprint"], parsed["dim"]
        model_dim = fingerprint.get("embed_dim") if isinstance(fingerprint, dict) else None
        if dim is not None and isinstance(model_dim, int) and dim != model_dim:
            raise self.corrupt(ValueError(
                f"its dim is {self.get_meta('dim')!r}, but its model embeds {model_dim} values"
            ))  # fmt: skip

    def _is_empty(self) -> bool:
        return self.con.execute("SELECT count(*) FROM files").fetchone()[0] == 0

    def close(self) -> None:
        self.con.close()

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get_json(self, key: str) -> Any:
        value = self.get_meta(key)
        return None if value is None else json.loads(value)

    def set_meta(self, values: dict[str, Any], in_transaction: bool = False) -> None:
        items = [(k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in values.items()]
        sql = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        if in_transaction:
            self.con.executemany(sql, items)
        else:
            with self.transaction():
                self.con.executemany(sql, items)

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    # -- rows ---------------------------------------------------------------------------------
    def row(self, path: str) -> Row | None:
        r = self.con.execute(f"SELECT {_COLUMNS} FROM files WHERE path = ?", (path,)).fetchone()
        return None if r is None else Row(*r)

    def rows_with_stat(self, size: int, mtime_ns: int, ino: int) -> list[Row]:
        cur = self.con.execute(
            f"SELECT {_COLUMNS} FROM files WHERE size = ? AND mtime_ns = ? AND ino = ?",
            (size, mtime_ns, ino),
        )
        return [Row(*r) for r in cur]

    def rows_with_hash(self, sha256: str) -> list[Row]:
        cur = self.con.execute(f"SELECT {_COLUMNS} FROM files WHERE sha256 = ?", (sha256,))
        return [Row(*r) for r in cur]

    def rows(self, status: str | None = None, under: str | None = None) -> Iterator[Row]:
        sql, args = f"SELECT {_COLUMNS} FROM files WHERE 1", []
        if status is not None:
            sql, args = sql + " AND status = ?", [status]
        if under is not None:
            clause, bounds = under_folder(under)
            sql += " AND " + clause
            args += bounds
        yield from (Row(*r) for r in self.con.execute(sql + " ORDER BY path", args))

    def paths_of_slots(self, slots: Iterable[int]) -> dict[int, str]:
        slots = [int(s) for s in slots]
        out: dict[int, str] = {}
        for i in range(0, len(slots), 500):  # SQLite's bound-parameter limit
            part = slots[i : i + 500]
            marks = ",".join("?" * len(part))
            cur = self.con.execute(
                f"SELECT slot, path FROM files WHERE status = '{OK}' AND slot IN ({marks})", part
            )
            out.update(cur.fetchall())
        return out

    def counts(self) -> dict[str, int]:
        cur = self.con.execute("SELECT status, count(*) FROM files GROUP BY status")
        return {OK: 0, FAILED: 0, OTHER: 0, MISSING: 0, **dict(cur.fetchall())}

    def live_slots(self) -> list[int]:
        cur = self.con.execute(f"SELECT slot FROM files WHERE status = '{OK}' ORDER BY slot")
        return [r[0] for r in cur]

    def put(self, entry: Any, status: str, slot: int | None, sha256: str | None, reason: str | None) -> None:
        """Insert or replace the row of ``entry`` (a ``FileEntry``); call inside a transaction."""
        self.con.execute(
            "INSERT INTO files (path, size, mtime_ns, dev, ino, sha256, status, slot, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
            "mtime_ns = excluded.mtime_ns, dev = excluded.dev, ino = excluded.ino, "
            "sha256 = excluded.sha256, status = excluded.status, slot = excluded.slot, "
            "reason = excluded.reason",
            (entry.path, entry.size, entry.mtime_ns, entry.dev, entry.ino, sha256, status, slot, reason),
        )

    def move(self, row_id: int, entry: Any) -> None:
        """Give an existing row (a renamed file) its new path and stat; inside a transaction."""
        self.con.execute("DELETE FROM files WHERE path = ? AND id != ?", (entry.path, row_id))
        self.con.execute(
            "UPDATE files SET path = ?, size = ?, mtime_ns = ?, dev = ?, ino = ?, status = ? WHERE id = ?",
            (entry.path, entry.size, entry.mtime_ns, entry.dev, entry.ino, OK, row_id),
        )

    def set_status(self, paths: Iterable[str], status: str) -> None:
        self.con.executemany("UPDATE files SET status = ? WHERE path = ?", [(status, p) for p in paths])

    def delete(self, paths: Iterable[str]) -> int:
        cur = self.con.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])
        return cur.rowcount

    def integrity(self) -> str:
        return self.con.execute("PRAGMA integrity_check").fetchone()[0]


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value!r} is not a positive whole number")
    return number


class _Transaction:
    """``with store.transaction():`` BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception.

    SQLite's errors (a full disk, a read-only file) leave as ``IndexFileError`` naming the index
    and the fix; the transaction is rolled back, so the index stays as it was committed."""

    def __init__(self, store: Store) -> None:
        self.store, self.con = store, store.con

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self.store.corrupt(e) from e
        return self.con

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.con.execute("COMMIT")
                return
            except sqlite3.Error as e:
                exc = e
        if self.con.in_transaction:  # SQLite may already have rolled back (SQLITE_FULL does)
            try:
                self.con.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one to report
        if isinstance(exc, sqlite3.Error):
            raise self.store.corrupt(exc) from exc


def under_folder(folder: str) -> tuple[str, tuple[str, str]]:
    """SQL for "path lies under ``folder``" and its two arguments: a byte-wise range, because
    LIKE ignores ASCII case and so took /photos/x for a file under /Photos."""
    prefix = folder.rstrip(os.sep) + os.sep
    return "(path >= ? AND path < ?)", (prefix, prefix[:-1] + chr(ord(os.sep) + 1))


class WriterLock:
    """An exclusive ``flock`` on ``<db>.lock``: one writer per index, across processes.

    A second writer waits up to ``timeout`` seconds (0: refuse at once) and then gets an
    ``IndexLockedError`` naming the holder's pid. The kernel drops the lock when its holder
    dies, even by kill -9, so a stale lock file never blocks anyone.
    """

    def __init__(self, db_path: Path, timeout: float = 0.0) -> None:
        self.path = Path(str(db_path) + ".lock")
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise IndexFileError(
                f"cannot open the index's lock file {self.path} ({e.strerror or e}); the index "
                "and its folder must be writable: pass --db somewhere writable."
            ) from e
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    waited = f" after waiting {self.timeout:g} s" if self.timeout else ""
                    raise IndexLockedError(
                        f"another edgeclip process (pid {holder}) is updating the index "
                        f"{str(self.path)[:-5]}{waited}; let it finish, or pass --wait SECONDS "
                        "to wait for it."
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
