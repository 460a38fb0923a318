"""vLLM's chat-style embeddings input: ``POST /v1/embeddings`` with ``messages`` for ``input``.

vLLM embeds a whole conversation as one vector, and clients written for its multimodal
embedders send one item a request that way; Frigate's ``vllm`` semantic-search provider is
one (``{"role": "system"}`` instruction, a ``user`` message holding an ``image_url`` part or a
``text`` part, an empty ``assistant`` turn). CLIP embeds one image or one text, so the user
messages must hold exactly one of them:

- every ``image_url`` part and every non-blank ``text`` part of the ``user`` messages counts;
  text parts join with a space into one text;
- an image together with non-blank text is refused (CLIP cannot embed both as one vector);
- ``system`` messages are instructions for instruction-tuned embedders, which CLIP has no
  use for: they are ignored, as documented; non-blank text in any other role is refused.
"""

from __future__ import annotations

from typing import Any

from .errors import APIError
from .inputs import base64_as_data_uri, is_blank
from .mixed import Item

_IGNORED_ROLES = ("system", "developer")


def _invalid(param: str, message: str) -> APIError:
    return APIError(422, message, param=param, code="invalid_type")


def _parts(content: Any, param: str) -> list[tuple[str, str, str]]:
    """(kind, value, param) of one message's content: a string or a list of parts."""
    if isinstance(content, str):
        return [("text", content, f"{param}.content")]
    if not isinstance(content, list):
        raise _invalid(f"{param}.content", f"{param}.content must be a string or a list of "
                       "parts such as {\"type\": \"text\", \"text\": \"a dog\"}.")  # fmt: skip
    parts = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(("text", part["text"], f"{where}.text"))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise _invalid(f"{where}.image_url", f"{where}.image_url must be "
                               "{\"url\": \"data:image/jpeg;base64,...\"}.")  # fmt: skip
            parts.append(("image", url, f"{where}.image_url.url"))
        else:
            raise _invalid(where, f"{where} must be a text part {{\"type\": \"text\", \"text\": "
                           "...} or an image part {\"type\": \"image_url\", \"image_url\": "
                           "{\"url\": ...}}.")  # fmt: skip
    return parts


def message_item(messages: Any, field: str = "messages") -> Item:
    """The one image or text that a chat-style embeddings request asks for, as an item."""
    if not isinstance(messages, list) or not messages:
        raise _invalid(field, f"{field} must be a non-empty list of chat messages, e.g. "
                       "[{\"role\": \"user\", \"content\": \"a dog\"}].")  # fmt: skip
    images: list[tuple[str, str, str]] = []
    texts: list[tuple[str, str, str]] = []
    for i, message in enumerate(messages):
        param = f"{field}[{i}]"
        if not isinstance(message, dict) or "content" not in message:
            raise _invalid(param, f"{param} must be an object with 'role' and 'content'.")
        role = message.get("role", "user")
        parts = _parts(message["content"], param)
        if role in _IGNORED_ROLES:
            continue
        words = [p for p in parts if p[0] == "text" and not is_blank(p[1])]
        if role != "user" and (words or any(p[0] == "image" for p in parts)):
            raise APIError(400, f"{param} ({role!r}) holds input; CLIP embeds one image or "
                           "one text, so put it in a 'user' message.", param=param,
                           code="invalid_value")  # fmt: skip
        images += [p for p in parts if p[0] == "image"]
        texts += words
    return _one_item(images, texts, field)


def _one_item(images: list[tuple[str, str, str]], texts: list[tuple[str, str, str]],
              field: str) -> Item:  # fmt: skip
    if len(images) > 1 or (images and texts):
        what = f"{len(images)} images" if len(images) > 1 else "an image and text"
        param = images[1][2] if len(images) > 1 else texts[0][2]
        raise APIError(400, f"{field} holds {what}; CLIP embeds one image or one text as a "
                       "vector, so send each in its own request (or use 'input', which takes "
                       "a list).", param=param, code="invalid_value")  # fmt: skip
    if images:
        kind, value, param = images[0]
        return kind, base64_as_data_uri(value), param
    if not texts:
        raise APIError(400, f"{field} holds no image and no text (blank text is not embedded); "
                       "put one in a 'user' message.", param=field, code="empty_input")  # fmt: skip
    return "text", " ".join(t[1].strip() for t in texts), texts[0][2]
