"""clip-as-service's HTTP API (jina-ai/clip-as-service): ``POST /post``.

A request is ``{"data": [doc, ...], "execEndpoint": "/"}``; a doc holds ``text``, or an image
as ``uri`` (a data URI; URLs are never fetched) or ``blob`` (base64). ``"/"`` (or
``"/encode"``) answers each doc with its ``embedding``; ``"/rank"`` takes docs with
``matches`` (docs of the other modality), and answers the matches sorted best first, each with
``scores.clip_score`` (softmax of the model's logit scale x cosine over the doc's matches) and
``scores.clip_score_cosine``. Errors are edgeclip's usual object, naming ``data[i].uri``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from .errors import APIError
from .inputs import is_blank, parse_json_body
from .mixed import Item, embed_items, failure_message
from .openai_api import json_response
from .service import Service

ENDPOINTS = ("/", "/encode", "/rank")


def _invalid(param: str, message: str, status: int = 422) -> APIError:
    return APIError(status, message, param=param, code="invalid_document")


def _content(doc: Any, param: str) -> Item:
    """What a doc holds: its text, or its image as a data URI."""
    if not isinstance(doc, dict):
        raise _invalid(param, f"{param} must be an object such as {{\"text\": \"a dog\"}} or "
                              "{\"uri\": \"data:image/jpeg;base64,...\"}.")  # fmt: skip
    held = [k for k in ("text", "uri", "blob") if doc.get(k) not in (None, "")]
    if len(held) != 1:
        what = "none of" if not held else "more than one of"
        raise _invalid(param, f"{param} holds {what} 'text', 'uri', 'blob'; give exactly one.")
    key, value = held[0], doc[held[0]]
    if not isinstance(value, str):
        raise _invalid(f"{param}.{key}", f"{param}.{key} must be a string.")
    if key == "text":
        if is_blank(value):
            raise _invalid(f"{param}.text", f"{param}.text is only whitespace or invisible "
                                            "characters; send words.", 400)  # fmt: skip
        return "text", value, f"{param}.text"
    if key == "blob" and value[:5].lower() != "data:":
        value = "data:image/*;base64," + value
    return "image", value, f"{param}.{key}"


def _failed(failures: list[dict], total: int, docs: list[dict], where: str) -> APIError:
    message = failure_message(failures, total, f"error.failed lists each; error.data holds {where}.")
    return APIError(400, message, param=failures[0]["param"], code="invalid_input",
                    extra={"failed": failures, "data": docs})  # fmt: skip


async def _encode(svc: Service, docs: list[Any]) -> list[dict]:
    items = [_content(doc, f"data[{i}]") for i, doc in enumerate(docs)]
    vectors, failures = await embed_items(svc, items)
    out = [{**doc, **({"embedding": v.tolist()} if v is not None else {})}
           for doc, v in zip(docs, vectors)]  # fmt: skip
    if failures:
        raise _failed(failures, len(items), out, "the docs, each good one with its embedding")
    return out


def _matches(doc: Any, param: str) -> list[Any]:
    matches = doc.get("matches") if isinstance(doc, dict) else None
    if not isinstance(matches, list) or not matches:
        raise _invalid(f"{param}.matches", f"{param}.matches must be a non-empty list of docs "
                                           "to rank against it, e.g. [{\"text\": \"a cat\"}].")  # fmt: skip
    return matches


def _scored(doc: dict, query: np.ndarray, found: list[np.ndarray], scale: float) -> dict:
    cosine = np.stack(found) @ query
    logits = scale * cosine.astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    matches = [{**doc["matches"][j], "scores": {
        "clip_score": {"value": float(probs[j]), "op_name": "softmax"},
        "clip_score_cosine": {"value": float(cosine[j]), "op_name": "cosine"}}} for j in order]  # fmt: skip
    return {**doc, "matches": matches}


async def _rank(svc: Service, docs: list[Any]) -> list[dict]:
    items: list[Item] = []
    spans = []  # per doc: (query index, first match index, number of matches)
    for i, doc in enumerate(docs):
        query = _content(doc, f"data[{i}]")
        matches = _matches(doc, f"data[{i}]")
        spans.append((len(items), len(items) + 1, len(matches)))
        items.append(query)
        items += [_content(m, f"data[{i}].matches[{j}]") for j, m in enumerate(matches)]
    if len(items) > svc.limits.max_prompts:
        raise _invalid("data", f"{len(items):,} docs and matches; this server embeds at most "
                               f"{svc.limits.max_prompts:,} per request (--max-prompts).", 413)  # fmt: skip
    vectors, failures = await embed_items(svc, items)
    scale = (await svc.model_info())["logit_scale"]
    # A doc is ranked when it and all its matches were embedded: without one of them the
    # softmax over the rest would be a different answer. Other docs come back as sent.
    out = [
        _scored(doc, vectors[q], vectors[m : m + n], scale)
        if all(v is not None for v in vectors[q : m + n]) else doc
        for doc, (q, m, n) in zip(docs, spans)
    ]  # fmt: skip
    if failures:
        raise _failed(failures, len(items), out, "the docs, each one whose inputs all worked "
                                                 "with its matches ranked")  # fmt: skip
    return out


async def post(request: Request) -> Response:
    svc: Service = request.app.state.service
    body = parse_json_body(await request.body(), request.headers.get("content-type"))
    # Frigate's clip-as-service client spells it exec_endpoint; either spelling, never both.
    spelled = [k for k in ("execEndpoint", "exec_endpoint") if k in body]
    if len(spelled) == 2 and body["execEndpoint"] != body["exec_endpoint"]:
        raise _invalid("execEndpoint", "execEndpoint and exec_endpoint disagree; send one.", 400)
    field = spelled[0] if spelled else "execEndpoint"
    endpoint = body.get(field, "/")
    if endpoint not in ENDPOINTS:
        raise _invalid(field, f"{field} {endpoint!r} is not served here; use "
                              "'/' (encode) or '/rank'.", 400)  # fmt: skip
    docs = body.get("data")
    if not isinstance(docs, list) or not docs:
        raise _invalid("data", "data must be a non-empty list of docs, e.g. [{\"text\": \"a dog\"}].")
    limit = svc.limits.max_texts
    if len(docs) > limit:
        raise _invalid("data", f"data holds {len(docs):,} docs; this server takes at most "
                               f"{limit:,} per request (--max-texts). Split the request.", 413)  # fmt: skip
    out = await (_rank(svc, docs) if endpoint == "/rank" else _encode(svc, docs))
    return await json_response({"data": out, "parameters": body.get("parameters") or {},
                                "header": {"execEndpoint": endpoint}})  # fmt: skip
