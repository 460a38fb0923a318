"""Immich's machine-learning API: ``POST /predict`` and ``GET /ping``.

Immich's server posts a multipart form: ``entries`` (JSON naming the task, the model type and
``modelName``) and either an ``image`` file or a ``text`` field. It wants the CLIP vector back
as a JSON *string* (it passes that string to Postgres unparsed), plus ``imageHeight`` and
``imageWidth`` for images. Only the ``clip`` task is served; Immich also only accepts model
names it knows, so serve under one of those names with ``--alias`` (docs/serve.md).
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .errors import APIError
from .inputs import check_text_lengths, empty_input, is_blank
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
        raise _invalid(
            "the form's 'entries' is a file; send it as a plain field."
            if raw is not None
            else "the form has no 'entries' field."
        )
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _invalid(f"'entries' is not JSON ({exc.msg}).") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number; '[' nested 100,000 deep
        raise _invalid(f"'entries' cannot be read ({type(exc).__name__}).") from None
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


async def _read_form(request: Request, svc: Service) -> FormData:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise APIError(
            415,
            f"/predict takes a multipart/form-data body (as Immich sends), not {media or 'none'!r}.",
            code="unsupported_media_type",
        )
    _check_complete(await request.body(), request.headers.get("content-type", ""))
    try:  # request.form() reads the body cached above
        return await request.form(
            max_files=2, max_fields=8, max_part_size=svc.limits.max_body_bytes
        )
    except (MultiPartException, HTTPException) as exc:  # Starlette turns the first into the second
        why = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise APIError(
            400,
            f"malformed multipart body: {why} Send a multipart/form-data form with an 'entries' "
            "field and an 'image' file or a 'text' field.",
            code="invalid_form",
        ) from None


def _check_complete(body: bytes, content_type: str) -> None:
    """A form cut off in transit parses as one with its last part missing, which would be
    answered "Either image or text must be provided": say what really happened. Likewise for a
    body written with another boundary than the header's (a Content-Type set by hand)."""
    from email.message import Message

    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return  # the form parser names a missing boundary
    delimiter = rb"(?:\A|\n)--" + re.escape(boundary.encode()) + rb"(?:--|[ \t]*\r?\n)"
    if not re.search(delimiter, body):
        raise _boundary_mismatch(body, boundary)
    if f"--{boundary}--".encode() not in body[-(len(boundary) + 64):]:
        raise APIError(400, f"the multipart body ({len(body):,} bytes) ends before its closing "
                            f"boundary '--{boundary}--': it was cut off on the way (a dropped "
                            "connection, a proxy's size limit). Nothing was embedded; send it again whole.",
                       code="truncated_form")  # fmt: skip


# RFC 2046: a delimiter line is "--" and 1 to 70 characters, at the start of the body or a line
_DELIMITER = re.compile(rb"(?:\A|\r?\n)--([0-9A-Za-z'()+_,./:=? -]{1,70}?)[ \t]*\r?\n")


def _boundary_mismatch(body: bytes, boundary: str) -> APIError:
    """400 for a body none of whose lines is the header's ``--boundary``."""
    found = _DELIMITER.search(body[:4096])
    if found:
        why = (f"the multipart body's boundary is {found.group(1).decode()!r} but the "
               f"Content-Type header's is {boundary!r}; they must be the same.")  # fmt: skip
    else:
        why = (f"the multipart body ({len(body):,} bytes) holds no line '--{boundary}', the "
               "Content-Type header's boundary, so it is not a form written with it.")  # fmt: skip
    return APIError(400, f"{why} Let the HTTP library write the Content-Type header with the "
                         "form (curl -F, requests' files=) instead of setting it by hand.",
                    code="boundary_mismatch")  # fmt: skip


def _one(form: FormData, field: str) -> Any:
    """The form's only ``field`` part, or None; two would leave the answer's input ambiguous."""
    parts = form.getlist(field)
    if len(parts) > 1:
        raise APIError(
            422,
            f"the form has {len(parts)} {field!r} parts; /predict embeds one input per request, "
            "as Immich sends it. Send one request per input.",
            param=field,
            code="invalid_form",
        )
    return parts[0] if parts else None


async def _visual(svc: Service, image: Any) -> dict[str, Any]:
    if not isinstance(image, UploadFile):
        why = (
            "a plain field, not a file (it has no filename), so its bytes arrived as text"
            if isinstance(image, str) else "missing"
        )  # fmt: skip
        raise APIError(
            422,
            f"clip.visual needs an 'image' file part; the form's 'image' is {why}. Send it as "
            "a file, e.g. curl -F image=@photo.jpg.",
            param="image",
            code="missing_field",
        )
    vectors, sizes = await svc.embed_images([await image.read()], "image", single=True)
    width, height = sizes[0] or (0, 0)
    return {"clip": vector_string(vectors[0]), "imageHeight": height, "imageWidth": width}


async def _textual(svc: Service, text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        why = "a file, not a plain field" if isinstance(text, UploadFile) else "missing"
        raise APIError(
            422,
            f"clip.textual needs a 'text' field; the form's 'text' is {why}. Send it as a "
            "plain field, e.g. curl -F text='a dog on a beach'.",
            param="text",
            code="missing_field",
        )
    if is_blank(text):  # its vector would be that of "", matching nothing in particular
        raise empty_input("text")
    check_text_lengths([text], "text", svc.limits, single=True)
    vectors, _ = await svc.embed_texts([text], "text", single=True)
    return {"clip": vector_string(vectors[0])}


async def predict(request: Request) -> Response:
    svc: Service = request.app.state.service
    form = await _read_form(request, svc)
    try:
        kind, name = parse_entries(_one(form, "entries"))
        svc.check_model(name, param=f"entries.clip.{kind}.modelName")
        image, text = _one(form, "image"), _one(form, "text")
        if image is None and text is None:
            hint = (
                " The form has only an 'assetId': Immich sends that instead of the image for "
                "models it runs itself; pick an ordinary CLIP model name in Immich."
                if "assetId" in form else ""
            )  # fmt: skip
            raise APIError(
                400, f"Either image or text must be provided.{hint}", code="missing_input"
            )
        if image is not None and text is not None:
            raise APIError(
                422,
                f"the form has both an 'image' and a 'text'; clip.{kind} embeds one of them. "
                "Send only the one that 'entries' asks for.",
                param="text" if kind == "visual" else "image",
                code="invalid_form",
            )
        payload = await (_visual(svc, image) if kind == "visual" else _textual(svc, text))
    finally:
        await form.close()
    return await json_response(payload)
