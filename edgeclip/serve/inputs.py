"""Turn request fields into model inputs, refusing each bad one with a message that names it.

Images arrive as ``data:<type>;base64,`` URIs or, only when the operator allowed a directory
(``--allow-dir``), as paths of files inside it. URLs are never fetched. Decoding stays in
``edgeclip.images`` (it runs in the model worker); here an image's header is read only to
refuse decompression bombs before they are queued and to report the size Immich asks for.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeclip.text import is_blank, visible_start

from .errors import APIError
from .limits import Limits

JSON_TYPES = ("application/json",)


def parse_json_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The request's JSON object; 415 for another content type, 400 for malformed JSON."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in JSON_TYPES and not media.endswith("+json"):
        raise APIError(
            415,
            f"the content type is {media or 'missing'!r}; send the request as JSON with "
            "'Content-Type: application/json'.",
            code="unsupported_media_type",
        )
    try:
        value = json.loads(body)
    except UnicodeDecodeError as exc:
        raise APIError(
            400, f"the body is not UTF-8 text ({exc.reason}).", code="invalid_json"
        ) from None
    except json.JSONDecodeError as exc:
        raise APIError(
            400,
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
            code="invalid_json",
        ) from None
    except RecursionError:  # '[' * 100000: the parser recurses once per level
        raise APIError(
            400, "malformed JSON: nested too deeply; no request needs more than a few levels.",
            code="invalid_json",
        ) from None
    except ValueError:  # an integer past Python's 4,300-digit conversion limit
        raise APIError(
            400,
            "malformed JSON: a number has more than 4,300 digits; no field needs one.",
            code="invalid_json",
        ) from None
    if not isinstance(value, dict):
        raise APIError(
            422,
            f"the body must be a JSON object, got a JSON {_json_kind(value)}.",
            code="invalid_type",
        )
    return value


def _json_kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def require(body: dict[str, Any], field: str) -> Any:
    if field not in body or body[field] is None:
        raise APIError(422, f"the field {field!r} is missing.", param=field, code="missing_field")
    return body[field]


def choice(body: dict[str, Any], field: str, allowed: Sequence[str], default: str) -> str:
    value = body.get(field)
    if value is None:
        return default
    if value not in allowed:
        raise APIError(
            400,
            f"{field}={value!r} is not supported; use one of {', '.join(map(repr, allowed))}.",
            param=field,
            code="invalid_value",
        )
    return value


def positive_int(body: dict[str, Any], field: str, default: int | None) -> int | None:
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(
            422,
            f"{field} must be an integer, got {_json_kind(value)}.",
            param=field,
            code="invalid_type",
        )
    if value < 0:
        raise APIError(
            400, f"{field}={value} must not be negative.", param=field, code="invalid_value"
        )
    return value


def item_param(field: str, index: int, single: bool) -> str:
    """How errors name one input: ``input`` when the request sent one bare value, else
    ``input[3]``, so ``param`` always points at what the client actually sent."""
    return field if single else f"{field}[{index}]"


def string_list(
    value: Any, field: str, *, what: str, limit: int, flag: str, allow_blank: bool = False
) -> list[str]:
    """A string or a list of strings, non-empty, at most ``limit`` long; each item non-empty.

    ``allow_blank`` leaves blank items to the caller, which refuses each one by name while
    keeping the other inputs' results (``Service.embed_texts`` / ``embed_images``).
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise APIError(
            422,
            f"{field} must be a string or a list of strings, got a JSON {_json_kind(value)}.",
            param=field,
            code="invalid_type",
        )
    if not items:
        raise APIError(
            400, f"{field} is empty; send at least one {what}.", param=field, code="empty_input"
        )
    if len(items) > limit:
        raise APIError(
            413,
            f"{field} holds {len(items):,} {what}s; this server takes at most {limit:,} per "
            f"request ({flag}). Split the request.",
            param=field,
            code="too_many_inputs",
        )
    for i, item in enumerate(items):
        if not isinstance(item, str):
            hint = " (token ids are not accepted; send the text)" if _token_ids(item) else ""
            raise APIError(
                422,
                f"{field}[{i}] is a JSON {_json_kind(item)}, not a string{hint}.",
                param=f"{field}[{i}]",
                code="invalid_type",
            )
        if not allow_blank and is_blank(item):
            raise empty_input(item_param(field, i, isinstance(value, str)), what)
    return items


def _token_ids(item: Any) -> bool:
    """An integer, or a list of them: what OpenAI's API takes as pre-tokenised input."""
    ids = item if isinstance(item, list) and item else [item]
    return all(isinstance(x, int) and not isinstance(x, bool) for x in ids)


def base64_as_data_uri(value: str) -> str:
    """An image reference as sent: a data URI or a URL stays as it is (a URL is refused later,
    by name); anything else is taken as bare base64, as Jina and vLLM clients send it."""
    if value[:5].lower() == "data:" or "://" in value[:16]:
        return value
    return "data:image/*;base64," + value


def empty_input(param: str, what: str = "text") -> APIError:
    """400 for an input with nothing in it: its vector would be a silent wrong answer."""
    if what == "image":
        why = "an empty string; send the image as a 'data:image/jpeg;base64,...' URI"
    else:
        why = (
            "empty or only whitespace / invisible characters, which the model would embed as "
            f"the vector of no text at all; send a non-empty {what}, or leave this one out"
        )
    return APIError(400, f"{param} is {why}.", param=param, code="empty_input")


def image_as_text(text: str, where: str) -> APIError | None:
    """400 for a data URI sent as text: an image without ``modality: "image"`` (the OpenAI
    client needs ``extra_body`` for it), whose base64 would be embedded as words."""
    # Leading whitespace or a BOM does not make a data URI any less of one.
    head = visible_start(text)[:128].lower()
    if not (head.startswith("data:") and ";base64," in head):
        return None
    return APIError(400, f"{where} is a base64 data URI, but modality is 'text' (the default), "
                         'so it would be embedded as words. Send "modality": "image" (with the '
                         'openai client: extra_body={"modality": "image"}).',
                    param=where, code="image_as_text")  # fmt: skip


def text_too_long(text: str, where: str, limits: Limits) -> APIError | None:
    """413 for a text over ``--max-text-chars``; None for one within it."""
    if len(text) <= limits.max_text_chars:
        return None
    return APIError(413, f"{where} has {len(text):,} characters; this server takes at most "
                         f"{limits.max_text_chars:,} (--max-text-chars). Text past the model's "
                         "context (77 tokens) is truncated anyway, so send its start.",
                    param=where, code="text_too_long")  # fmt: skip


def check_text_lengths(texts: list[str], field: str, limits: Limits, single: bool = False) -> None:
    """Raise the first text's ``text_too_long``: for inputs that are all needed at once (labels,
    search terms). Embedding requests refuse each text alone (``Service.embed_texts``)."""
    for i, text in enumerate(texts):
        error = text_too_long(text, item_param(field, i, single), limits)
        if error is not None:
            raise error


# -- images ------------------------------------------------------------------------------------


def image_bytes(ref: str, param: str, allow_dirs: Sequence[Path], max_bytes: int) -> bytes:
    """The encoded image behind ``ref``: a base64 data URI, or a file under an allowed directory."""
    if ref[:5].lower() == "data:":  # the scheme is case-insensitive (RFC 2397)
        return _from_data_uri(ref, param)
    lowered = ref[:16].lower()
    if "://" in lowered:
        raise APIError(
            400,
            f"{param} is a URL; edgeclip serve never fetches URLs. Send the image itself as a "
            "'data:image/jpeg;base64,...' URI.",
            param=param,
            code="url_not_allowed",
        )
    if not allow_dirs:
        raise APIError(
            400,
            f"{param} is neither a 'data:image/...;base64,' URI nor allowed as a server path "
            "(this server was started without --allow-dir).",
            param=param,
            code="invalid_image",
        )
    # longer than any path (PATH_MAX), or 64+ characters of base64 with no separator or dot
    if len(ref) > 4096 or _BARE_BASE64.fullmatch(ref):
        raise APIError(
            400,
            f"{param} looks like bare base64 ({len(ref):,} characters); prefix it with "
            "'data:image/jpeg;base64,' (or the image's own type).",
            param=param,
            code="invalid_image",
        )
    return read_allowed_file(ref, param, allow_dirs, max_bytes)


_BARE_BASE64 = re.compile(r"[A-Za-z0-9+]{64}[A-Za-z0-9+/]*={0,2}")


def _from_data_uri(ref: str, param: str) -> bytes:
    head, sep, payload = ref.partition(",")
    if not sep or not head.endswith(";base64"):
        raise APIError(
            400,
            f"{param} is a data URI without ';base64,'; send 'data:image/jpeg;base64,<bytes>'.",
            param=param,
            code="invalid_image",
        )
    try:
        data = _b64decode(payload)
    except (binascii.Error, ValueError) as exc:
        raise APIError(
            400,
            f"{param} is not valid base64 ({exc}); send the file's bytes base64-encoded "
            "(standard or URL-safe alphabet) after 'base64,'.",
            param=param,
            code="invalid_base64",
        ) from None
    if not data:
        raise APIError(
            400, f"{param} is an empty image (0 bytes).", param=param, code="invalid_image"
        )
    return data


_WHITESPACE = re.compile(r"[ \t\r\n]+")


def _b64decode(payload: str) -> bytes:
    """Strict base64, tolerating what common encoders write: line breaks (``base64`` wraps at
    76 columns, RFC 2045), missing ``=`` padding and the URL-safe alphabet (RFC 4648 section 5).
    Anything else outside the alphabet is still an error, never silently dropped."""
    text = _WHITESPACE.sub("", payload)
    text += "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        if "+" in text or "/" in text:
            raise ValueError("it mixes the standard and the URL-safe alphabets")
        text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text, validate=True)


def resolve_allowed(ref: str, allow_dirs: Sequence[Path]) -> Path | None:
    """``ref``'s real path (symlinks resolved) if it lies inside one of ``allow_dirs``, else None.

    A relative ``ref`` is taken relative to the first allowed directory. ``..`` segments and
    symlinks are resolved before the containment check, so neither can leave the directory.
    """
    if "\x00" in ref or not allow_dirs:
        return None
    raw = Path(ref)
    candidate = raw if raw.is_absolute() else allow_dirs[0] / raw
    real = Path(os.path.realpath(candidate))
    for root in allow_dirs:
        if real == root or root in real.parents:
            return real
    return None


def read_allowed_file(ref: str, param: str, allow_dirs: Sequence[Path], max_bytes: int) -> bytes:
    real = resolve_allowed(ref, allow_dirs)
    if real is None:
        raise APIError(
            400,
            f"{param} is outside the directories this server may read (--allow-dir); "
            "paths are resolved, symlinks included, before they are checked.",
            param=param,
            code="path_not_allowed",
        )
    try:
        # O_NONBLOCK: opening a FIFO placed in the directory must not hang the server.
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise APIError(
            400, f"{param} cannot be opened ({exc.strerror}).", param=param, code="invalid_image"
        ) from None
    try:
        f = os.fdopen(fd, "rb")
    except OSError as exc:  # a directory: Python refuses to wrap it
        os.close(fd)
        raise APIError(
            400, f"{param} is not a regular file ({exc.strerror}).", param=param,
            code="invalid_image",
        ) from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise APIError(
                400, f"{param} is not a regular file.", param=param, code="invalid_image"
            )
        if st.st_size > max_bytes:
            raise APIError(
                413,
                f"{param} is {st.st_size:,} bytes; the limit is {max_bytes:,} (--max-body-bytes).",
                param=param,
                code="image_too_large",
            )
        return f.read(max_bytes + 1)[:max_bytes]


def image_size(data: bytes, param: str, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) from the header, refusing more than ``max_pixels`` (413).

    None when Pillow cannot read the header: the model worker then decodes it and reports
    edgeclip's own reason (not an image, HEIC without its plugin, ...).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(param, max_pixels, str(exc)) from None
    except Exception:  # unreadable headers are the decoder's to explain
        return None
    if width * height > max_pixels:
        raise _too_many_pixels(param, max_pixels, f"{width}x{height} = {width * height:,} pixels")
    return width, height


def _too_many_pixels(param: str, max_pixels: int, what: str) -> APIError:
    return APIError(
        413,
        f"{param} is too large to decode ({what}); this server takes at most {max_pixels:,} "
        "pixels per image (--max-pixels). Downscale it first.",
        param=param,
        code="image_too_large",
    )
