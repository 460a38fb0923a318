"""Immich's machine-learning API: ``POST /predict`` and ``GET /ping``.

Immich's server posts a multipart form: ``entries`` (JSON naming the task, the model type and
``modelName``) and either an ``image`` file or a ``text`` field. It wants the CLIP vector back
as a JSON *string* (it passes that string to Postgres unparsed), plus ``imageHeight`` and
``imageWidth`` for images. Only the ``clip`` task is served; Immich also only accepts model
names it knows, so serve under one of those names with ``--alias`` (docs/serve.md).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .errors import APIError
from .inputs import check_text_lengths
from .openai_api import json_response
from .service import Service

_KINDS = ("visual", "textual")


def vector_string(vector: Any) -> str:
    """The vector as Immich's ML service writes it: a compact JSON array, as a string."""
    return json.dumps(vector.tolist(), separators=(",", ":"))


def _invalid(why: str) -> APIError:
    return APIError(422, f"Invalid request format: {why}", param="entries", code="invalid_entries")


def parse_entries(raw: Any) -> tuple[str, str]:
    """``(kind, modelName)`` from the ``entries`` field; kind is "visual" or "textual"."""
    if not isinstance(raw, str):
        raise _invalid("the form has no 'entries' field.")
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _invalid(f"'entries' is not JSON ({exc.msg}).") from None
    if not isinstance(entries, dict) or not entries:
        raise _invalid('\'entries\' must be an object such as {"clip": {"visual": {...}}}.')
    others = sorted(set(entries) - {"clip"})
    if others:
        raise _invalid(
            f"edgeclip serves only the 'clip' task, not {', '.join(map(repr, others))}; turn "
            "those jobs off in Immich or give them another machine-learning URL."
        )
    clip = entries["clip"]
    kinds = [k for k in _KINDS if isinstance(clip, dict) and k in clip]
    if len(kinds) != 1 or len(clip) != 1:
        raise _invalid("'clip' must hold exactly one of 'visual' or 'textual'.")
    entry = clip[kinds[0]]
    name = entry.get("modelName") if isinstance(entry, dict) else None
    if not isinstance(name, str):
        raise _invalid(f"'clip.{kinds[0]}' has no 'modelName' string.")
    return kinds[0], name


async def ping(request: Request) -> Response:
    return PlainTextResponse("pong")


async def predict(request: Request) -> Response:
    svc: Service = request.app.state.service
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise APIError(
            415,
            f"/predict takes a multipart/form-data body (as Immich sends), not {media or 'none'!r}.",
            code="unsupported_media_type",
        )
    try:
        form = await request.form(
            max_files=2, max_fields=8, max_part_size=svc.limits.max_body_bytes
        )
    except MultiPartException as exc:
        raise APIError(
            400, f"malformed multipart body: {exc.message}", code="invalid_form"
        ) from None
    try:
        kind, name = parse_entries(form.get("entries"))
        svc.check_model(name, param=f"entries.clip.{kind}.modelName")
        image, text = form.get("image"), form.get("text")
        if image is None and text is None:
            raise APIError(400, "Either image or text must be provided", code="missing_input")
        if kind == "visual":
            if not isinstance(image, UploadFile):
                raise APIError(
                    422, "clip.visual needs an 'image' file.", param="image", code="missing_field"
                )
            data = await image.read()
            vectors, sizes = await svc.embed_images([data], "image")
            width, height = sizes[0] or (0, 0)
            payload = {
                "clip": vector_string(vectors[0]),
                "imageHeight": height,
                "imageWidth": width,
            }
        else:
            if not isinstance(text, str):
                raise APIError(
                    422, "clip.textual needs a 'text' field.", param="text", code="missing_field"
                )
            check_text_lengths([text], "text", svc.limits)
            vectors, _ = await svc.embed_texts([text])
            payload = {"clip": vector_string(vectors[0])}
    finally:
        await form.close()
    return await json_response(payload)
