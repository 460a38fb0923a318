"""Photo search over HTTP (``edgeclip serve MODEL --index photos.db``): the index behind
``/v1/search`` and the ``/v1/photos/{id}`` thumbnails (the handlers are in ``photo_api.py``).

The query is embedded by the served model, through the model host (the worker subprocess), and
the vectors are searched here, in the server process: the server never loads a second model.
The index is opened read-only. SQLite connections belong to the thread that made them, so one
dedicated thread owns the index and runs every lookup, in order: concurrent requests queue for
it (a search is milliseconds) while thumbnails decode on other threads.

An index knows its model's fingerprint; a served model with another one gets 409, never a
silent comparison of two models' vectors.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip.index.store import OK  # only embedded files are ever served
from edgeclip.index.thumbnails import render_thumbnail

from .errors import APIError

if TYPE_CHECKING:
    pass

DEFAULT_K, MAX_K = 20, 1000
DEFAULT_SIZE, MIN_SIZE, MAX_SIZE = 256, 32, 2048
MAX_TERMS = 32  # add + subtract terms of one query
# Thumbnails may change under one id (an edited file, a --reindex that reuses row ids): the
# browser keeps them but asks again each time, and an unchanged file costs a 304, no decode.
CACHE_CONTROL = "private, no-cache"


class _NoModel:
    """The index's model inside the server: any use is a bug, because it would load a second
    copy of the model next to the worker's."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the server's photo index tried to use a model ({name}); queries "
                           "are embedded by the model host")  # fmt: skip


def check_index(path: str) -> Path:
    """The ``--index`` file, checked before the server binds; ``SystemExit`` with one line."""
    from edgeclip.errors import EdgeclipError
    from edgeclip.index.library import Index

    db = Path(path).expanduser().absolute()
    build = f"build it with `edgeclip index DIR --db {db}`"
    if not db.exists():
        raise SystemExit(f"edgeclip serve: --index {db}: no such file; {build}, or fix the path.")
    if db.is_dir():
        raise SystemExit(f"edgeclip serve: --index {db} is a folder; give the index's file, "
                         f"for example --index {db / 'photos.db'}.")  # fmt: skip
    try:
        with Index(db, _NoModel(), readonly=True) as ix:
            fingerprint, dim = ix.store.get_meta("fingerprint"), ix.store.get_meta("dim")
    except EdgeclipError as exc:
        why = str(exc).split(";")[0].rstrip(".")
        raise SystemExit(f"edgeclip serve: --index {db}: {why}; give the file that "
                         "`edgeclip index DIR --db FILE` wrote.") from None  # fmt: skip
    if fingerprint is None or dim is None:
        raise SystemExit(f"edgeclip serve: --index {db} holds no photos yet; {build} first.")
    return db


class PhotoLibrary:
    """The ``--index`` file, read-only, owned by one thread (its SQLite connection's)."""

    def __init__(self, path: Path, max_pixels: int) -> None:
        self.path = Path(path)
        self.max_pixels = max_pixels
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgeclip-index")
        self._index: Any = None  # opened on the thread, on first use
        self._decoding: asyncio.Semaphore | None = None

    def _open(self) -> Any:
        if self._index is None:
            from edgeclip.index.library import Index

            self._index = Index(self.path, _NoModel(), readonly=True)
        return self._index

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def search(self, vector: np.ndarray, served: dict[str, Any], k: int,
                     under: str | None) -> list[tuple[str, float, int]]:  # fmt: skip
        """(path, score, id) of the best ``k``; 409 if ``served`` is not the index's model."""
        return await self._run(self._search_sync, vector, served, k, under)

    def _search_sync(self, vector: np.ndarray, served: dict[str, Any], k: int,
                     under: str | None) -> list[tuple[str, float, int]]:  # fmt: skip
        ix = self._open()
        recorded = ix.store.get_meta("fingerprint")
        # Read on every search: an `edgeclip index --reindex` may switch models while we serve.
        if recorded is None or json.loads(recorded) != _plain(served.get("fingerprint")):
            raise mismatch(self.path, ix.store.get_json("model") or {}, recorded, served)
        hits = ix.search_vector(vector, k, under=under)
        ids = _ids_of(ix.store.con, [h.path for h in hits])
        # A hit whose row a concurrent writer dropped between the two queries is left out.
        return [(h.path, h.score, ids[h.path]) for h in hits if h.path in ids]

    async def vector_of(self, photo_id: int) -> np.ndarray | None:
        """The stored unit vector of an embedded photo ("more like this"); None if there is none."""
        return await self._run(self._vector_sync, photo_id)

    def _vector_sync(self, photo_id: int) -> np.ndarray | None:
        from edgeclip.index.vectors import unit_rows

        ix = self._open()
        row = ix.store.con.execute(
            "SELECT slot FROM files WHERE id = ? AND status = ?", (photo_id, OK)
        ).fetchone()
        if row is None or row[0] is None or row[0] >= ix.committed_slots():
            return None
        return unit_rows(ix.vectors.matrix(ix.committed_slots())[row[0]][None])[0]

    async def path_of(self, photo_id: int) -> str | None:
        """The file of an embedded photo, by the index's row id; None if there is none."""
        return await self._run(self._path_sync, photo_id)

    def _path_sync(self, photo_id: int) -> str | None:
        row = self._open().store.con.execute(
            "SELECT path FROM files WHERE id = ? AND status = ?", (photo_id, OK)
        ).fetchone()
        return None if row is None else row[0]

    async def thumbnail(self, path: str, size: int) -> bytes:
        # Bounded: a grid of 20 decodes at once would hold 20 photos' bytes on a small board.
        if self._decoding is None:
            self._decoding = asyncio.Semaphore(max(1, os.cpu_count() or 1))
        async with self._decoding:
            return await asyncio.to_thread(render_thumbnail, path, size, self.max_pixels)

    def close(self) -> None:
        def close_on_thread() -> None:
            if self._index is not None:
                self._index.close()

        self._thread.submit(close_on_thread).result()
        self._thread.shutdown(wait=True)


def _plain(value: Any) -> Any:
    """A fingerprint as the index stores it (JSON; the library writes it with default=str)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _ids_of(con: Any, paths: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(paths), 500):  # SQLite's bound-parameter limit
        part = paths[i : i + 500]
        marks = ",".join("?" * len(part))
        cur = con.execute(
            f"SELECT path, id FROM files WHERE status = ? AND path IN ({marks})", [OK, *part]
        )
        out.update(cur.fetchall())
    return out


def _short(fp: dict[str, Any]) -> str:
    return f"bundle {str(fp.get('bundle'))[:12]}, variant {fp.get('variant')}, dim {fp.get('embed_dim')}"


def mismatch(db: Path, model: dict[str, Any], recorded: str | None, served: dict[str, Any]) -> APIError:
    """409: the index's vectors come from another model than the one served."""
    index_fp = json.loads(recorded) if recorded else {}
    name = model.get("name", "?")
    message = (
        f"the index {db} was built with {name} ({_short(index_fp)}), but this server serves "
        f"{served.get('name')} ({_short(served.get('fingerprint') or {})}): their vectors are not "
        f"comparable, so nothing was searched. Serve the index's model (edgeclip serve {name} "
        f"--index {db}), or rebuild the index with this one (edgeclip index DIR --db {db} "
        f"--model {served.get('arg') or served.get('name')} --reindex)."
    )
    return APIError(409, message, code="model_mismatch", extra={
        "index_model": {"name": name, "fingerprint": index_fp},
        "served_model": {"name": served.get("name"), "fingerprint": served.get("fingerprint")},
    })  # fmt: skip


# -- requests -------------------------------------------------------------------------------------
