"""``POST /v1/embeddings`` (OpenAI's format as infinity extends it) and ``POST /v1/classify``."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from .chat_messages import message_item
from .errors import APIError
from .inputs import (
    check_text_lengths,
    choice,
    parse_json_body,
    positive_int,
    require,
    string_list,
)
from .mixed import embed_items, failure_message, input_objects
from .service import InputsFailed, Service


async def json_response(payload: dict[str, Any], status: int = 200) -> Response:
    """JSON rendered off the event loop: 2,048 vectors of 512 floats take a while to write."""
    body = await asyncio.to_thread(json.dumps, payload, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json")


MAX_DIMENSIONS = 4096  # padding past the widest common vector column (3,072) buys nothing


def check_dimensions(dimensions: int) -> None:
    if dimensions > MAX_DIMENSIONS:
        raise APIError(
            400,
            f"dimensions={dimensions} exceeds {MAX_DIMENSIONS}, the most this server pads a "
            "vector to; send a smaller value or leave it out.",
            param="dimensions",
            code="invalid_value",
        )


def apply_dimensions(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """OpenAI's ``dimensions``: fewer than the model's keeps the first values, renormalised;
    more appends zeros.

    CLIP was not trained for truncation (unlike Matryoshka models), so a shorter vector keeps
    less of the meaning; docs/serve.md says so. Zero padding changes no cosine or dot product,
    and lets a client with a fixed vector width (Frigate's 768) use a 512-wide model.
    """
    full = vectors.shape[1]
    check_dimensions(dimensions)
    if not dimensions or dimensions == full:
        return vectors
    if dimensions > full:
        return np.pad(vectors, ((0, 0), (0, dimensions - full))).astype(np.float32)
    cut = vectors[:, :dimensions]
    return (cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _data(vectors: np.ndarray, indices: list[int], fmt: str, dimensions: int) -> list[dict]:
    vectors = apply_dimensions(vectors, dimensions)
    return [
        {"object": "embedding", "embedding": _encode(v, fmt), "index": i}
        for i, v in zip(indices, vectors)
    ]


async def _embed(
    svc: Service, raw: Any, modality: str, fmt: str, dimensions: int
) -> tuple[np.ndarray, int]:
    """The request's vectors and token count; on a partial failure, the error carries the
    good inputs' embeddings (``error.data``), formatted as a success would have them."""
    limits, single = svc.limits, isinstance(raw, str)
    items = input_objects(raw, "input", limits.max_texts)
    if items is not None:  # Jina's [{"text": ...}, {"image": ...}]: both modalities at once
        return await _embed_objects(svc, items, fmt, dimensions)
    try:
        if modality == "text":
            texts = string_list(raw, "input", what="text", limit=limits.max_texts,
                                flag="--max-texts", allow_blank=True)  # fmt: skip
            # an over-long text or a data URI fails alone, in embed_texts
            vectors, counts = await svc.embed_texts(texts, "input", single, refuse_data_uris=True)
            return vectors, sum(counts)
        refs = string_list(raw, "input", what="image", limit=limits.max_images,
                           flag="--max-images", allow_blank=True)  # fmt: skip
        vectors, _ = await svc.embed_images(refs, "input", single)
        return vectors, len(refs)  # an image counts as one token
    except InputsFailed as exc:
        good = sorted(exc.vectors)
        rows = [exc.vectors[i] for i in good]
        exc.extra["data"] = _data(np.stack(rows), good, fmt, dimensions) if rows else []
        if rows:
            exc.message += f" error.data holds the embeddings of the other {len(rows)}."
        raise


async def _embed_objects(svc: Service, items: list, fmt: str, dimensions: int) -> tuple[np.ndarray, int]:
    counts: list[int] = []
    vectors, failures = await embed_items(svc, items, counts)
    if failures:
        good = [i for i, v in enumerate(vectors) if v is not None]
        data = _data(np.stack([vectors[i] for i in good]), good, fmt, dimensions) if good else []
        rest = "; error.data holds the embeddings of the others." if good else "."
        message = failure_message(failures, len(items), "error.failed lists each" + rest)
        raise APIError(400, message, param=failures[0]["param"], code="invalid_input",
                       extra={"failed": failures, "data": data})  # fmt: skip
    return np.stack(vectors), sum(counts)


def _encode(vector: np.ndarray, fmt: str) -> Any:
    if fmt == "base64":  # OpenAI's: raw little-endian float32 bytes, base64 encoded
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def embeddings(request: Request) -> Response:
    svc: Service = request.app.state.service
    body = parse_json_body(await request.body(), request.headers.get("content-type"))
    model = svc.check_model(body.get("model"))
    modality = choice(body, "modality", ("text", "image"), "text")
    fmt = choice(body, "encoding_format", ("float", "base64"), "float")
    dimensions = positive_int(body, "dimensions", 0) or 0
    check_dimensions(dimensions)  # before the work
    if "messages" in body:  # vLLM's chat-style input: one image or one text
        if "input" in body:
            raise APIError(400, "the request holds both 'input' and 'messages'; send one.",
                           param="messages", code="invalid_value")  # fmt: skip
        item = message_item(body["messages"])
        vectors, tokens = await _embed_objects(svc, [item], fmt, dimensions)
    else:
        vectors, tokens = await _embed(svc, require(body, "input"), modality, fmt, dimensions)
    payload = {
        "object": "list",
        "data": _data(vectors, list(range(len(vectors))), fmt, dimensions),
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "id": f"embd-{uuid.uuid4().hex}",
        "created": int(time.time()),
    }
    return await json_response(payload)


def _prompts_per_label(templates: Any) -> int:
    """How many prompts each label becomes, from the library's own check of the templates; an
    error in them names ``templates``."""
    if not (templates is None or isinstance(templates, str) or (
            isinstance(templates, list) and all(isinstance(t, str) for t in templates))):  # fmt: skip
        raise APIError(
            422,
            "templates must be a template-set name ('photo', 'imagenet7', 'imagenet80'), a "
            "string with '{}', or a list of such strings.",
            param="templates",
            code="invalid_type",
        )
    return len(_check_with_library("templates", templates))


def _check_with_library(field: str, value: Any) -> Any:
    """``value`` as the library checks it (``edgeclip.prompts``), before the model loads; its
    error names ``field`` when it names nothing more precise (``labels[2]``)."""
    from edgeclip.errors import InputError
    from edgeclip.prompts import check_labels, resolve_templates

    check = check_labels if field == "labels" else resolve_templates
    try:
        return check(value)
    except InputError as exc:
        raise APIError(400, str(exc), param=exc.param or field, code="invalid_input") from None


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def _rank(
    image_emb: np.ndarray, indices: list[int], label_emb: np.ndarray, labels: list[str],
    scale: float, top_k: int,
) -> list[dict[str, Any]]:
    """Each image's labels best first; ``indices``: the images' places in the request."""
    cosine = image_emb @ label_emb.T
    logits = scale * cosine.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    data = []
    for row, index in enumerate(indices):
        order = np.argsort(-probs[row], kind="stable")[:top_k]
        ranking = [
            {"label": labels[j], "probability": float(probs[row, j]),
             "cosine": float(cosine[row, j])} for j in order
        ]  # fmt: skip
        data.append({"object": "classification", "index": index, "ranking": ranking})
    return data


def _classify_labels(body: dict[str, Any], limits: Any) -> tuple[list[str], Any, int]:
    """The request's labels, its templates and how many prompts they make, within the limits."""
    raw_labels = require(body, "labels")
    labels = string_list(raw_labels, "labels", what="label", limit=limits.max_labels,
                         flag="--max-labels")  # fmt: skip
    check_text_lengths(labels, "labels", limits, isinstance(raw_labels, str))
    _check_with_library("labels", labels)
    templates = body.get("templates")
    per_label = _prompts_per_label(templates)
    prompts = len(labels) * per_label
    if prompts > limits.max_prompts:
        raise APIError(
            413,
            f"{_plural(len(labels), 'label')} x {_plural(per_label, 'template')} = "
            f"{_plural(prompts, 'prompt')}; this server embeds at most {limits.max_prompts:,} "
            "per request (--max-prompts).",
            param="labels",
            code="too_many_inputs",
        )
    return labels, templates, prompts


async def classify(request: Request) -> Response:
    svc: Service = request.app.state.service
    body = parse_json_body(await request.body(), request.headers.get("content-type"))
    model = svc.check_model(body.get("model"))
    raw_images = require(body, "images")
    images = string_list(raw_images, "images", what="image", limit=svc.limits.max_images,
                         flag="--max-images")  # fmt: skip
    labels, templates, prompts = _classify_labels(body, svc.limits)
    top_k = positive_int(body, "top_k", len(labels))
    if top_k == 0:
        raise APIError(400, "top_k must be at least 1.", param="top_k", code="invalid_value")
    label_emb = await svc.label_embeddings(labels, templates)
    scale = (await svc.model_info())["logit_scale"]
    try:
        image_emb, _ = await svc.embed_images(images, "images", isinstance(raw_images, str))
    except InputsFailed as exc:  # the good images' rankings come back in the error
        good = sorted(exc.vectors)
        exc.extra["data"] = []
        if good:
            rows = np.stack([exc.vectors[i] for i in good])
            exc.extra["data"] = _rank(rows, good, label_emb, labels, scale, top_k)
            exc.message += f" error.data holds the rankings of the other {len(good)}."
        raise
    payload = {
        "object": "list",
        "model": model,
        "data": _rank(image_emb, list(range(len(images))), label_emb, labels, scale, top_k),
        "usage": {"images": len(images), "prompts": prompts},
    }
    return await json_response(payload)
