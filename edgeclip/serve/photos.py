"""Photo search over HTTP (``edgeclip serve MODEL --index photos.db``): ``/v1/search``,
``/v1/photos/{id}`` thumbnails and the page at ``/photos``.

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
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .errors import APIError
from .inputs import check_text_lengths, is_blank, parse_json_body, positive_int, require

if TYPE_CHECKING:
    from .service import Service

DEFAULT_K, MAX_K = 20, 1000
DEFAULT_SIZE, MIN_SIZE, MAX_SIZE = 256, 32, 2048
MAX_TERMS = 32  # add + subtract terms of one query
# Thumbnails may change under one id (an edited file, a --reindex that reuses row ids): the
# browser keeps them but asks again each time, and an unchanged file costs a 304, no decode.
CACHE_CONTROL = "private, no-cache"
_OK = "ok"  # edgeclip.index.store.OK: only embedded, present files are ever served


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

    async def path_of(self, photo_id: int) -> str | None:
        """The file of an embedded photo, by the index's row id; None if there is none."""
        return await self._run(self._path_sync, photo_id)

    def _path_sync(self, photo_id: int) -> str | None:
        row = self._open().store.con.execute(
            "SELECT path FROM files WHERE id = ? AND status = ?", (photo_id, _OK)
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
            f"SELECT path, id FROM files WHERE status = ? AND path IN ({marks})", [_OK, *part]
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


def render_thumbnail(path: str, size: int, max_pixels: int) -> bytes:
    """A JPEG of the photo, its longest side ``size`` (never enlarged), as indexing reads it:
    JPEGs drafted in the DCT domain, EXIF-rotated, under the server's pixel limit."""
    from PIL import Image

    from edgeclip.index.pipeline import read_image

    im = read_image(path, draft_to=size, max_pixels=max_pixels)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


# -- requests -------------------------------------------------------------------------------------


def _library(request: Request) -> PhotoLibrary:
    lib = getattr(request.app.state, "photos", None)
    if lib is None:
        raise APIError(404, "this server has no photo index; start it with `edgeclip serve MODEL "
                       "--index photos.db` (the file `edgeclip index DIR --db photos.db` builds).",
                       code="no_index")  # fmt: skip
    return lib


def _whole(value: Any, field: str, low: int, high: int, default: int) -> int:
    """A query-string or JSON number in [low, high]; 400 naming ``field`` otherwise."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise APIError(400, f"{field}={value!r} is not a whole number; send {low} to {high}.",
                           param=field, code="invalid_value") from None  # fmt: skip
    if not low <= value <= high:
        raise APIError(400, f"{field}={value} is out of range; send {low} to {high}.",
                       param=field, code="invalid_value")  # fmt: skip
    return value


def _terms(value: Any, field: str) -> list[str]:
    """``add`` / ``subtract``: absent, one text, or a list of texts; each must hold words."""
    items = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise APIError(422, f"{field} must be a string or a list of strings.", param=field,
                       code="invalid_type")  # fmt: skip
    for i, item in enumerate(items):
        where = field if isinstance(value, str) else f"{field}[{i}]"
        if not isinstance(item, str):
            raise APIError(422, f"{where} must be a string (text terms only over HTTP).",
                           param=where, code="invalid_type")  # fmt: skip
        if is_blank(item):
            raise APIError(400, f"{where} is empty; give words, or leave it out.", param=where,
                           code="empty_input")  # fmt: skip
    return items


def _query(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise APIError(422, f"{field} must be a string.", param=field, code="invalid_type")
    if is_blank(value):
        raise APIError(400, f"{field} is empty; give words to search for, e.g. {field}=a dog on "
                       "a beach.", param=field, code="empty_input")  # fmt: skip
    return value


def _under(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise APIError(422, "under must be a string.", param="under", code="invalid_type")
    folder = os.path.expanduser(value.strip())
    if not os.path.isabs(folder) or "\x00" in folder:
        raise APIError(400, f"under={value!r} is not an absolute folder; give one like the paths "
                       "in the results, e.g. /home/pi/Pictures/2024.", param="under",
                       code="invalid_value")  # fmt: skip
    return folder


async def _vector(svc: Service, terms: dict[str, tuple[list[str], bool]]) -> np.ndarray:
    """The query's unit vector plus each added term's minus each subtracted one's, normalised,
    as ``Index.query_vector`` computes it, from vectors the model host embedded.

    ``terms``: field -> (texts, whether the request sent one bare string: then errors name the
    field alone)."""
    from edgeclip.index.vectors import unit_rows

    fields = [f for f, (texts, _) in terms.items() if texts]
    for f in fields:
        check_text_lengths(terms[f][0], f, svc.limits, terms[f][1])
    # One call per field, so an error names its own field; concurrent, so they batch together.
    embedded = await asyncio.gather(
        *(svc.embed_texts(terms[f][0], f, terms[f][1]) for f in fields), return_exceptions=True
    )
    for result in embedded:  # every call is awaited to its end before one failure is raised
        if isinstance(result, BaseException):
            raise result
    total = np.zeros(embedded[0][0].shape[1], np.float64)
    for f, (vecs, _) in zip(fields, embedded):
        total += (-1.0 if f == "subtract" else 1.0) * unit_rows(vecs).sum(axis=0)
    norm = float(np.linalg.norm(total))
    if not norm > 1e-4:
        raise APIError(400, "the query's terms cancel out: what is subtracted is what is asked "
                       "for; drop one of them.", param="subtract", code="invalid_value")  # fmt: skip
    return (total / norm).astype(np.float32)


async def _search(svc: Service, lib: PhotoLibrary, terms: dict[str, tuple[list[str], bool]],
                  k: int, under: str | None, model: Any) -> Response:  # fmt: skip
    from .openai_api import json_response

    answer_as = svc.check_model(model)
    extra = len(terms["add"][0]) + len(terms["subtract"][0])
    if extra > MAX_TERMS:
        raise APIError(413, f"{extra} add/subtract terms; this server takes at most {MAX_TERMS}.",
                       param="add", code="too_many_inputs")  # fmt: skip
    vector = await _vector(svc, terms)
    info = svc.host.info or await svc.model_info()  # set by the load that embedded the query
    served = {**info, "arg": svc.config.spec.model}  # as given to serve: for the --reindex hint
    hits = await lib.search(vector, served, k, under)
    data = [{"path": p, "score": s, "photo": f"/v1/photos/{i}"} for p, s, i in hits]
    return await json_response({"object": "list", "data": data, "model": answer_as})


async def search(request: Request) -> Response:
    """``GET /v1/search?q=&k=&under=`` or ``POST /v1/search`` with a JSON body."""
    svc: Service = request.app.state.service
    lib = _library(request)
    if request.method == "GET":
        params = request.query_params
        if params.get("q") is None:
            raise APIError(400, "q is missing; search with /v1/search?q=a+dog+on+a+beach.",
                           param="q", code="empty_input")  # fmt: skip
        terms = {"q": ([_query(params["q"], "q")], True),
                 "add": (_terms(params.getlist("add"), "add"), False),
                 "subtract": (_terms(params.getlist("subtract"), "subtract"), False)}  # fmt: skip
        k = _whole(params.get("k"), "k", 1, MAX_K, DEFAULT_K)
        return await _search(svc, lib, terms, k, _under(params.get("under")), params.get("model"))
    body = parse_json_body(await request.body(), request.headers.get("content-type"))
    terms = {"query": ([_query(require(body, "query"), "query")], True)}
    for field in ("add", "subtract"):
        terms[field] = (_terms(body.get(field), field), isinstance(body.get(field), str))
    k = positive_int(body, "k", DEFAULT_K)  # 422 for a k that is not a number, as elsewhere
    k = _whole(k, "k", 1, MAX_K, DEFAULT_K)
    return await _search(svc, lib, terms, k, _under(body.get("under")), body.get("model"))


def _not_found(raw: str) -> APIError:
    return APIError(404, f"no photo {raw!r} in the index; use the ids /v1/search answers with "
                    "(data[i].photo).", param="id", code="photo_not_found")  # fmt: skip


async def photo(request: Request) -> Response:
    """``GET /v1/photos/{id}?size=256``: a JPEG thumbnail of an indexed photo, by its row id."""
    lib = _library(request)
    raw = request.path_params["photo_id"]
    size = _whole(request.query_params.get("size"), "size", MIN_SIZE, MAX_SIZE, DEFAULT_SIZE)
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise _not_found(raw)
    path = await lib.path_of(int(raw))
    if path is None:
        raise _not_found(raw)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise APIError(404, f"photo {raw} ({path}) is in the index but cannot be found "
                       f"({exc.strerror}); index again (--prune drops vanished files).",
                       param="id", code="photo_missing") from None  # fmt: skip
    # The file's identity and version: an edited or replaced file gets a new tag.
    key = f"{raw}\0{path}\0{st.st_size}\0{st.st_mtime_ns}\0{size}".encode()
    tag = f'"{hashlib.sha1(key).hexdigest()[:20]}"'
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": tag}
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    try:
        jpeg = await lib.thumbnail(path, size)
    except Exception as exc:  # InputError from the decoder, or a file that is no image now
        why = str(exc).rstrip(".") or "it is not an image (JPEG, PNG, WebP, GIF, TIFF or BMP)"
        raise APIError(422, f"photo {raw} ({path}) cannot be decoded: {why}.", param="id",
                       code="invalid_photo") from None  # fmt: skip
    return Response(jpeg, media_type="image/jpeg", headers=headers)


async def page(request: Request) -> Response:
    html = resources.files("edgeclip.serve").joinpath("static/photos.html").read_text("utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})
