"""Embedding a request's texts and images together, each named by the request's own field.

Used by clip-as-service's ``/post`` docs and Jina-style ``input`` objects on
``/v1/embeddings``: the texts go to the text batcher and the images to the image batcher,
once each, and a failure is reported against ``data[3].uri`` or ``input[3].image``, as sent.
"""

from __future__ import annotations

import numpy as np

from .errors import APIError
from .inputs import base64_as_data_uri
from .service import InputsFailed, Service

Item = tuple[str, str, str]  # (kind "text" | "image", value, param naming it in the request)


def _remap(failed: list[dict], local: list[int], items: list[Item], field: str) -> list[dict]:
    """InputsFailed names ``field[i]`` within one modality; name the request's own field."""
    out = []
    for f in failed:
        param = items[local[f["index"]]][2]
        out.append({**f, "index": local[f["index"]], "param": param,
                    "message": f["message"].replace(f["param"] or field, param, 1)})  # fmt: skip
    return out


async def embed_items(
    svc: Service, items: list[Item], counts: list[int] | None = None
) -> tuple[list[np.ndarray | None], list[dict]]:
    """Every item's vector (None where it failed) and the failures, texts and images batched.
    ``counts``, if given, receives each item's token count (an image counts as one)."""
    vectors: list[np.ndarray | None] = [None] * len(items)
    failures: list[dict] = []
    if counts is not None:
        counts[:] = [1] * len(items)
    for kind in ("text", "image"):
        local = [i for i, item in enumerate(items) if item[0] == kind]
        if not local:
            continue
        values = [items[i][1] for i in local]
        if kind == "image" and len(values) > svc.limits.max_images:
            raise APIError(413, f"{len(values):,} images in one request; this server takes at "
                                f"most {svc.limits.max_images:,} (--max-images).",
                           code="too_many_inputs")  # fmt: skip
        try:
            if kind == "text":  # an over-long text fails alone, named as sent (data[3].text)
                rows, tokens = await svc.embed_texts(values, kind)
                got = dict(enumerate(rows))
                for i, n in zip(local, tokens):
                    if counts is not None:
                        counts[i] = n
            else:
                got = dict(enumerate((await svc.embed_images(values, kind))[0]))
        except InputsFailed as exc:
            got = exc.vectors
            failures += _remap(exc.extra["failed"], local, items, kind)
        for j, vector in got.items():
            vectors[local[j]] = vector
    return vectors, sorted(failures, key=lambda f: f["index"])


def failure_message(failures: list[dict], total: int, where: str) -> str:
    """One message for a request some of whose inputs failed; ``where``: where the rest are."""
    shown = "; ".join(f["message"].rstrip(".") for f in failures[:5])
    more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
    return f"{len(failures)} of {total} inputs failed: {shown}{more}. {where}"


def input_objects(raw: object, field: str, limit: int) -> list[Item] | None:
    """Jina's ``input`` of objects, ``[{"text": ...}, {"image": "<data URI or base64>"}]``, as
    items; None when ``raw`` is not a list of objects (plain strings take the usual path)."""
    if not isinstance(raw, list) or not any(isinstance(x, dict) for x in raw):
        return None
    if len(raw) > limit:
        raise APIError(413, f"{field} holds {len(raw):,} inputs; this server takes at most "
                            f"{limit:,} per request (--max-texts). Split the request.",
                       param=field, code="too_many_inputs")  # fmt: skip
    items = []
    for i, obj in enumerate(raw):
        param = f"{field}[{i}]"
        keys = [k for k in ("text", "image") if isinstance(obj, dict) and k in obj]
        if len(keys) != 1 or len(obj) != 1 or not isinstance(obj[keys[0]], str):
            raise APIError(422, f"{param} must be one object {{\"text\": \"...\"}} or "
                                "{\"image\": \"data:image/jpeg;base64,...\"} (all items objects, "
                                "or all strings).", param=param, code="invalid_type")  # fmt: skip
        value = obj[keys[0]]
        if keys[0] == "image":
            value = base64_as_data_uri(value)
        items.append((keys[0], value, f"{param}.{keys[0]}"))
    return items
