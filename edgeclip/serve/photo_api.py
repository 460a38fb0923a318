"""The HTTP side of photo search (``--index``): ``/v1/search`` (text, "more like this" by
photo id, add/subtract, under), ``/v1/photos/{id}`` thumbnails and the ``/photos`` page. The
index itself, its thread and the thumbnails are in ``photos.py``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .errors import APIError
from .inputs import check_text_lengths, is_blank, parse_json_body, positive_int, require
from .photos import (
    CACHE_CONTROL,
    DEFAULT_K,
    DEFAULT_SIZE,
    MAX_K,
    MAX_SIZE,
    MAX_TERMS,
    MIN_SIZE,
    PhotoLibrary,
)

if TYPE_CHECKING:
    from .service import Service


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


_GET_PARAMS = ("q", "like", "k", "under", "add", "subtract", "model")
_POST_FIELDS = ("query", "like", "image", "k", "under", "add", "subtract", "model")
_COUNT_NAMES = ("top_k", "topk", "limit", "n", "count", "num_results")
_PAGING_NAMES = ("offset", "page", "skip", "start", "cursor", "after", "page_size")


def _check_names(names: Any, known: tuple[str, ...], query_field: str) -> None:
    """400 for a parameter /v1/search does not take: ignored, ``top_k=5`` or ``offset=20`` would
    answer as if it were not there (20 results, the first page), a silently wrong answer."""
    for name in names:
        if name in known:
            continue
        if name in _COUNT_NAMES:
            hint = "the number of results is k, e.g. k=5 (1 to 1000)"
        elif name in _PAGING_NAMES:
            hint = (f"/v1/search has no paging: ask for more results at once with k (up to "
                    f"{MAX_K}) and skip the ones already shown")  # fmt: skip
        elif name in ("q", "query", "text", "prompt"):
            hint = f"the words go in {query_field}"
        else:
            hint = "it takes " + ", ".join(known)
        raise APIError(400, f"/v1/search does not take {name!r}; {hint}.", param=name,
                       code="unknown_parameter")  # fmt: skip


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


async def _vector(svc: Service, terms: dict[str, tuple[list[str], bool]],
                  base: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The query's unit vector plus each added term's minus each subtracted one's, normalised,
    as ``Index.query_vector`` computes it, from vectors the model host embedded.

    ``terms``: field -> (texts, whether the request sent one bare string: then errors name the
    field alone). ``base``: a stored photo's unit vector, the query of "more like this"."""
    from edgeclip.errors import InputError
    from edgeclip.index.vectors import combine

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
    signed = [] if base is None else [(1.0, base)]
    for f, (vecs, _) in zip(fields, embedded):
        signed += [(-1.0 if f == "subtract" else 1.0, row) for row in vecs]
    try:
        return combine(signed)
    except InputError as exc:
        raise APIError(400, str(exc), param="subtract", code="invalid_value") from None


async def _search(svc: Service, lib: PhotoLibrary, terms: dict[str, tuple[list[str], bool]],
                  k: int, under: str | None, model: Any,
                  base: tuple[str, Any] | None = None) -> Response:  # fmt: skip
    from .openai_api import json_response

    answer_as = svc.check_model(model)
    extra = len(terms["add"][0]) + len(terms["subtract"][0])
    if extra > MAX_TERMS:
        raise APIError(413, f"{extra} add/subtract terms; this server takes at most {MAX_TERMS}.",
                       param="add", code="too_many_inputs")  # fmt: skip
    vector = await _vector(svc, terms, None if base is None else await _base_vector(svc, lib, *base))
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
        _check_names(params.keys(), _GET_PARAMS, "q")
        like = _one_query(params.get("q"), params.get("like"), "q")
        terms = {"q": ([] if like is not None else [_query(params["q"], "q")], True),
                 "add": (_terms(params.getlist("add"), "add"), False),
                 "subtract": (_terms(params.getlist("subtract"), "subtract"), False)}  # fmt: skip
        k = _whole(params.get("k"), "k", 1, MAX_K, DEFAULT_K)
        return await _search(svc, lib, terms, k, _under(params.get("under")), params.get("model"),
                             None if like is None else ("like", like))  # fmt: skip
    body = parse_json_body(await request.body(), request.headers.get("content-type"))
    _check_names(body.keys(), _POST_FIELDS, "query")
    base = _post_base(body)
    # without like/image, a missing query is a 422 naming it, as elsewhere in the JSON API
    terms = {"query": ([] if base is not None else [_query(require(body, "query"), "query")], True)}
    for field in ("add", "subtract"):
        terms[field] = (_terms(body.get(field), field), isinstance(body.get(field), str))
    k = positive_int(body, "k", DEFAULT_K)  # 422 for a k that is not a number, as elsewhere
    k = _whole(k, "k", 1, MAX_K, DEFAULT_K)
    return await _search(svc, lib, terms, k, _under(body.get("under")), body.get("model"), base)


def _post_base(body: dict[str, Any]) -> tuple[str, Any] | None:
    """``("like", id)`` or ``("image", data URI)`` when the body asks by photo instead of words."""
    given = [f for f in ("query", "like", "image") if body.get(f) is not None]
    if len(given) > 1:
        raise APIError(400, f"give one of query (words), like (a photo id) or image (a data "
                       f"URI), not {' and '.join(given)}; add words with add.", param=given[1],
                       code="invalid_value")  # fmt: skip
    return (given[0], body[given[0]]) if given and given[0] != "query" else None


async def _base_vector(svc: Service, lib: PhotoLibrary, kind: str, ref: Any) -> np.ndarray:
    if kind == "like":
        return await _liked(lib, ref)
    if not isinstance(ref, str):
        raise APIError(422, "image must be a string: a data URI (data:image/jpeg;base64,...).",
                       param="image", code="invalid_type")  # fmt: skip
    from edgeclip.index.vectors import unit_rows

    vectors, _ = await svc.embed_images([ref], "image", single=True)  # 400 naming image if bad
    return unit_rows(vectors)[0]


def _one_query(text: Any, like: Any, field: str) -> Any:
    """``like`` (a photo id: "more like this") when given instead of the text query; one of the
    two is required, not both."""
    if like is not None and text is not None:
        raise APIError(400, f"give {field} (words) or like (a photo id), not both; add words to "
                       "a photo with add=.", param="like", code="invalid_value")  # fmt: skip
    if like is None and text is None:
        raise APIError(400, f"{field} is missing; search with /v1/search?q=a+dog+on+a+beach, or "
                       "like=ID for photos like one in the results.", param=field,
                       code="empty_input")  # fmt: skip
    return like


async def _liked(lib: PhotoLibrary, like: Any) -> np.ndarray:
    raw = str(like)
    if isinstance(like, bool) or not (isinstance(like, int) or raw.isascii() and raw.isdigit()):
        raise APIError(400, f"like={raw!r} is not a photo id; use the number in a result's "
                       "photo (/v1/photos/ID).", param="like", code="invalid_value")  # fmt: skip
    vector = await lib.vector_of(int(raw)) if len(raw) <= 18 else None
    if vector is None:
        raise APIError(404, f"no photo {raw!r} in the index to search like; use the ids "
                       "/v1/search answers with (data[i].photo).", param="like",
                       code="photo_not_found")  # fmt: skip
    return vector


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
    if not stat.S_ISREG(st.st_mode):
        # a FIFO put where the photo was would block the decoding thread forever on open()
        raise APIError(404, f"photo {raw} ({path}) is in the index but is no longer a regular "
                       "file; index again (--prune drops vanished files).", param="id",
                       code="photo_missing")  # fmt: skip
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
