"""What the endpoints share: the configuration, the model host, the two batchers, the metrics.

Nothing here knows HTTP beyond ``APIError``; the route modules turn requests into these calls.
"""

from __future__ import annotations

import asyncio
import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batcher import Batcher, QueueFull
from .errors import APIError
from .inputs import (
    empty_input,
    image_as_text,
    image_bytes,
    image_size,
    is_blank,
    item_param,
    text_too_long,
)
from .lifecycle import ModelHost
from .limits import Limits
from .metrics import Metrics
from .worker import ModelInputError, ModelSpec, WorkerFailed


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``edgeclip serve`` was started with (see ``cli.py`` for the flags)."""

    spec: ModelSpec
    #: names a request may use for the model: the one given first, then aliases
    names: tuple[str, ...]
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    allow_dirs: tuple[Path, ...] = ()
    max_batch: int = 32
    batch_window_s: float = 0.005
    max_queue: int = 256
    idle_ttl_s: float | None = 300.0
    #: unload the image tower alone after this long without image requests; None: never
    image_idle_ttl_s: float | None = None
    in_process: bool = False
    preload: bool = False
    #: origins whose pages may call the API from a browser (``--cors-origin``; "*": any)
    cors_origins: tuple[str, ...] = ()
    #: extra ``Host`` names a loopback-bound server answers (``--allow-host``); None: no check
    allowed_hosts: tuple[str, ...] | None = None
    #: requests in flight before a JSON 503 (``--max-connections``); None: no limit
    max_in_flight: int | None = None
    #: the photo index searched by ``/v1/search`` (``--index``, checked at start); None: none
    index: Path | None = None


@dataclass
class ImageFailure:
    reason: str


class InputsFailed(APIError):
    """Some inputs of one request failed: one error naming each, keeping the others' vectors.

    The error object gets ``failed`` (every failed input: index, param, message, code) and,
    through the endpoint, ``data`` (the good inputs' embeddings), so a client can keep those
    and resend only what failed. One failure among one input is that input's own error.
    """

    def __init__(
        self, failed: dict[int, APIError], vectors: dict[int, np.ndarray], total: int, what: str
    ) -> None:
        order = sorted(failed)
        first = failed[order[0]]
        if total == 1:
            message = first.message
        else:
            detail = "; ".join(failed[i].message.rstrip(".") for i in order[:5])
            more = f" (and {len(order) - 5} more)" if len(order) > 5 else ""
            message = (
                f"{len(order)} of {total} {what} failed, so the request failed: {detail}{more}. "
                "error.failed lists each; fix or drop them and resend."
            )
        codes = {failed[i].code for i in order}
        super().__init__(
            413 if all(failed[i].status == 413 for i in order) else 400,
            message,
            param=first.param,
            code=first.code if len(codes) == 1 else f"invalid_{what[:-1]}",
            extra={"failed": [
                {"index": i, "param": failed[i].param, "message": failed[i].message,
                 "code": failed[i].code} for i in order
            ]},
        )  # fmt: skip
        self.vectors = vectors


class Service:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.metrics = Metrics()
        self.host = ModelHost(
            config.spec, idle_ttl_s=config.idle_ttl_s, in_process=config.in_process,
            metrics=self.metrics, image_idle_ttl_s=config.image_idle_ttl_s,
        )  # fmt: skip
        common = {"max_batch": config.max_batch, "window_s": config.batch_window_s,
                  "max_queue": config.max_queue, "on_batch": self.metrics.batch_ran}  # fmt: skip
        self.images = Batcher("image", self._run_images, **common)
        self.texts = Batcher("text", self._run_texts, **common)
        self.stopping = False
        self.preload_error: str | None = None

    @property
    def model_name(self) -> str:
        return self.config.names[0]

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self.images.start()
        self.texts.start()
        self.host.start_watching()
        if self.config.preload:
            try:
                await self.host.load()
            except WorkerFailed as exc:
                # Reported by the command as one line (exit 1): raised here, Starlette would
                # print it inside a traceback.
                self.preload_error = str(exc)

    async def stop(self) -> None:
        self.stopping = True
        await self.images.stop()
        await self.texts.stop()
        await self.host.close()

    # -- the model, through the batchers --------------------------------------------------------
    async def _call(self, op: str, args: Any) -> Any:
        try:
            return await self.host.call(op, args)
        except WorkerFailed as exc:
            raise APIError(500, str(exc), code="model_unavailable") from None
        except ModelInputError as exc:
            raise APIError(400, str(exc), param=exc.param, code="invalid_input") from None
        except RuntimeError as exc:
            raise APIError(500, f"the model failed: {exc}", code="model_error") from None

    async def _run_images(self, items: list[bytes]) -> list[Any]:
        emb, failures = await self._call("image", items)
        return [ImageFailure(failures[i]) if i in failures else emb[i] for i in range(len(items))]

    async def _run_texts(self, items: list[str]) -> list[Any]:
        emb, counts = await self._call("text", items)
        return list(zip(emb, counts))

    @staticmethod
    async def _submit(submit: Any, items: list[Any]) -> list[Any]:
        try:
            return await submit(items)
        except QueueFull as exc:
            raise APIError(429, str(exc), code="queue_full", headers={"Retry-After": "1"}) from None

    async def embed_texts(
        self, texts: list[str], param: str = "input", single: bool = False,
        *, refuse_data_uris: bool = False,
    ) -> tuple[np.ndarray, list[int]]:
        """(N, D) float32 and each text's token count.

        A text over ``--max-text-chars`` (413), a data URI when ``refuse_data_uris`` (the
        request could have sent it as an image), or a text with no tokens fails alone: the
        others are embedded anyway and ``InputsFailed`` names each failure and keeps their
        vectors, as ``embed_images`` does for images.
        """
        failed = self._refuse_texts(texts, param, single, refuse_data_uris)
        sent = [i for i in range(len(texts)) if i not in failed]
        rows: list[Any] = []
        if sent:
            async with self.texts.expect() as submit:
                rows = await self._submit(submit, [texts[i] for i in sent])
        vectors, counts = {}, {}
        for i, (vector, count) in zip(sent, rows):
            # The library refuses a text with no words ("&nbsp;" unescapes to whitespace: the
            # vector of "" would be a silent wrong answer); the worker hands it back as NaN.
            if np.isnan(vector).any():
                failed[i] = empty_input(item_param(param, i, single))
            else:
                vectors[i], counts[i] = vector, count
        if failed:
            raise InputsFailed(failed, vectors, len(texts), "texts")
        return np.stack([vectors[i] for i in sent]), [counts[i] for i in sent]

    def _refuse_texts(
        self, texts: list[str], param: str, single: bool, refuse_data_uris: bool
    ) -> dict[int, APIError]:
        """The refusal of each text that is not sent to the model, by index."""
        refused = {}
        for i, text in enumerate(texts):
            where = item_param(param, i, single)
            # a data URI first: a real image is longer than the text limit, and "send its
            # start" would be the wrong fix for it
            error = (image_as_text(text, where) if refuse_data_uris else None) or text_too_long(
                text, where, self.limits
            )
            if error is not None:
                refused[i] = error
        return refused

    async def embed_images(
        self, refs: Sequence[Any], param: str, single: bool = False
    ) -> tuple[np.ndarray, list]:
        """Embeddings of images given as data URIs / allowed paths (str) or raw bytes.

        Returns (N, D) float32 and each image's (width, height) (None if unknown). If any image
        is bad, the request fails with ``InputsFailed``, which names every bad one and keeps the
        vectors of the good ones (they are embedded anyway, so a client loses none of them);
        other requests batched with it are unaffected.
        """
        async with self.images.expect() as submit:
            blobs, sizes, failed = await asyncio.to_thread(
                self._prepare_images, list(refs), param, single
            )
            good = [i for i in range(len(refs)) if i not in failed]
            rows = await self._submit(submit, [blobs[i] for i in good])
        vectors = {}
        for i, row in zip(good, rows):
            if isinstance(row, ImageFailure):
                where = item_param(param, i, single)
                failed[i] = APIError(
                    400, f"{where} could not be read: {row.reason}", param=where,
                    code="invalid_image",
                )  # fmt: skip
            else:
                vectors[i] = row
        if failed:
            raise InputsFailed(failed, vectors, len(refs), "images")
        return np.stack([vectors[i] for i in range(len(refs))]), sizes

    def _prepare_images(
        self, refs: list[Any], param: str, single: bool
    ) -> tuple[dict[int, bytes], list, dict[int, APIError]]:
        """Every image's bytes and size, and the refusal of each one that cannot be sent on."""
        blobs, sizes, refused = {}, [], {}
        for i, ref in enumerate(refs):
            where = item_param(param, i, single)
            try:
                if isinstance(ref, str) and is_blank(ref):
                    raise empty_input(where, "image")
                data = ref if isinstance(ref, bytes) else image_bytes(
                    ref, where, self.config.allow_dirs, self.limits.max_body_bytes
                )  # fmt: skip
                sizes.append(image_size(data, where, self.limits.max_pixels))
            except APIError as exc:
                refused[i] = exc
                sizes.append(None)
                continue
            blobs[i] = data
        return blobs, sizes, refused

    async def label_embeddings(self, labels: list[str], templates: Any) -> np.ndarray:
        return await self._call("labels", (labels, templates))

    async def model_info(self) -> dict[str, Any]:
        if self.host.info is None:
            try:
                await self.host.load()
            except WorkerFailed as exc:
                raise APIError(500, str(exc), code="model_unavailable") from None
        assert self.host.info is not None
        return self.host.info

    # -- names -----------------------------------------------------------------------------------
    def served_names(self) -> list[str]:
        names = list(self.config.names)
        if self.host.info and self.host.info["name"] not in names:
            names.append(self.host.info["name"])
        return names

    def listed_names(self) -> list[str]:
        """The names shown to clients (``/v1/models``, errors): the served ones without the
        server's filesystem paths, which clients may still send but need not learn."""
        names = self.served_names()
        public = [n for n in names if "/" not in n and os.sep not in n and not n.startswith("~")]
        return public or [Path(names[0]).name]

    def check_model(self, name: Any, param: str = "model") -> str:
        """The model name to answer with; 400 with close matches if ``name`` is not served."""
        if name is None:
            return self.model_name
        if not isinstance(name, str):
            raise APIError(422, f"{param} must be a string.", param=param, code="invalid_type")
        listed = self.listed_names()
        if name in listed or name in self.served_names():
            return name
        close = difflib.get_close_matches(name, listed, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise APIError(
            400,
            f"model {name!r} is not served here.{hint} This server serves "
            f"{', '.join(map(repr, listed))} (add names with --alias).",
            param=param,
            code="model_not_found",
        )
