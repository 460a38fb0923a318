"""Weaviate's ``multi2vec-clip`` inference API: ``POST /vectorize``, ``GET /meta``,
``GET /.well-known/live`` and ``/.well-known/ready``.

Weaviate's module posts ``{"texts": [...], "images": [<bare base64>, ...]}`` and reads
``{"textVectors": [[...]], "imageVectors": [[...]]}``, in the order sent. It decodes an error
as ``{"error": "<string>"}`` (a nested object would fail to decode and hide the message), so
errors here are that string, plus ``failed`` (which input, why) and the good inputs' vectors
(``null`` where one failed): nothing embedded is lost. Point Weaviate at it with
``CLIP_INFERENCE_API=http://HOST:PORT``; Weaviate sends no API key (docs/serve.md).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import APIError
from .inputs import is_blank, parse_json_body, string_list
from .mixed import failure_message
from .openai_api import json_response
from .service import InputsFailed, Service


async def live_and_ready(request: Request) -> Response:
    svc: Service = request.app.state.service
    return Response(status_code=503 if svc.stopping else 204)


async def meta(request: Request) -> Response:
    """What Weaviate shows as the module's model: name, variant, embedding width."""
    svc: Service = request.app.state.service
    try:
        info = await svc.model_info()
    except APIError as exc:
        return _error(exc.status, exc.message)
    return JSONResponse({"model": info})


def _inputs(body: dict[str, Any], field: str, svc: Service) -> list[str]:
    """``texts`` or ``images``: absent, null or [] is none; else a list of strings (a blank or
    bad one fails alone, in ``_vectors``)."""
    value = body.get(field)
    if value is None or value == []:
        return []
    if field == "texts":
        return string_list(value, field, what="text", limit=svc.limits.max_texts,
                           flag="--max-texts", allow_blank=True)  # fmt: skip
    images = string_list(value, field, what="image", limit=svc.limits.max_images,
                         flag="--max-images", allow_blank=True)  # fmt: skip
    # Weaviate sends the blob's bare base64; a data URI is taken as it is, and a blank one is
    # left blank so that the service refuses it as empty rather than as bad base64.
    return [ref if is_blank(ref) or ref[:5].lower() == "data:" else "data:image/*;base64," + ref
            for ref in images]  # fmt: skip


async def _vectors(svc: Service, field: str, items: list[str]) -> tuple[list, list[dict]]:
    """(vectors, failures): a failed input's vector is None and its failure is listed."""
    if not items:
        return [], []
    try:
        if field == "texts":
            vectors, _ = await svc.embed_texts(items, field)
        else:
            vectors, _ = await svc.embed_images(items, field)
        return [v.tolist() for v in vectors], []
    except InputsFailed as exc:
        rows = [exc.vectors[i].tolist() if i in exc.vectors else None for i in range(len(items))]
        return rows, exc.extra["failed"]


def _error(status: int, message: str, **more: Any) -> Response:
    return JSONResponse({"error": message, **more}, status_code=status)


async def vectorize(request: Request) -> Response:
    svc: Service = request.app.state.service
    try:
        body = parse_json_body(await request.body(), request.headers.get("content-type"))
        texts, images = _inputs(body, "texts", svc), _inputs(body, "images", svc)
    except APIError as exc:  # before any work: nothing to keep
        return _error(exc.status, exc.message, param=exc.param)
    text_vectors, text_failed = await _vectors(svc, "texts", texts)
    image_vectors, image_failed = await _vectors(svc, "images", images)
    failed = text_failed + image_failed
    if failed:
        message = failure_message(failed, len(texts) + len(images), "The others' vectors are in "
                                  "textVectors / imageVectors (null where one failed).")  # fmt: skip
        return _error(400, message, param=failed[0]["param"], failed=failed, textVectors=text_vectors,
                      imageVectors=image_vectors)  # fmt: skip
    return await json_response({"textVectors": text_vectors, "imageVectors": image_vectors})

