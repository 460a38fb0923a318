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
from .inputs import image_bytes, image_size
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
    in_process: bool = False
    preload: bool = False


@dataclass
class ImageFailure:
    reason: str


class Service:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.metrics = Metrics()
        self.host = ModelHost(
            config.spec, idle_ttl_s=config.idle_ttl_s, in_process=config.in_process,
            metrics=self.metrics,
        )  # fmt: skip
        common = {"max_batch": config.max_batch, "window_s": config.batch_window_s,
                  "max_queue": config.max_queue, "on_batch": self.metrics.batch_ran}  # fmt: skip
        self.images = Batcher("image", self._run_images, **common)
        self.texts = Batcher("text", self._run_texts, **common)
        self.stopping = False

    @property
    def model_name(self) -> str:
        return self.config.names[0]

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self.images.start()
        self.texts.start()
        self.host.start_watching()
        if self.config.preload:
            await self.host.load()

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
            raise APIError(400, str(exc), code="invalid_input") from None
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

    async def embed_texts(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        async with self.texts.expect() as submit:
            rows = await self._submit(submit, texts)
        return np.stack([r[0] for r in rows]), [r[1] for r in rows]

    async def embed_images(self, refs: Sequence[Any], param: str) -> tuple[np.ndarray, list]:
        """Embeddings of images given as data URIs / allowed paths (str) or raw bytes.

        Returns (N, D) float32 and each image's (width, height) (None if unknown). If any image
        is bad, the whole request fails with 400 naming each bad index; other requests batched
        with it are unaffected.
        """
        async with self.images.expect() as submit:
            blobs, sizes = await asyncio.to_thread(self._prepare_images, list(refs), param)
            rows = await self._submit(submit, blobs)
        bad = {i: r.reason for i, r in enumerate(rows) if isinstance(r, ImageFailure)}
        if bad:
            detail = "; ".join(f"{param}[{i}]: {why}" for i, why in sorted(bad.items())[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise APIError(
                400,
                f"{len(bad)} of {len(refs)} images could not be read, so nothing was embedded: "
                f"{detail}{more}",
                param=f"{param}[{min(bad)}]",
                code="invalid_image",
            )
        return np.stack(rows), sizes

    def _prepare_images(self, refs: list[Any], param: str) -> tuple[list[bytes], list]:
        """Every image's bytes and size; one error naming every refused input, not the first."""
        blobs, sizes, refused = [], [], []
        for i, ref in enumerate(refs):
            where = f"{param}[{i}]"
            try:
                data = ref if isinstance(ref, bytes) else image_bytes(
                    ref, where, self.config.allow_dirs, self.limits.max_body_bytes
                )  # fmt: skip
                sizes.append(image_size(data, where, self.limits.max_pixels))
            except APIError as exc:
                refused.append(exc)
                continue
            blobs.append(data)
        if len(refused) == 1:
            raise refused[0]
        if refused:
            detail = "; ".join(e.message.rstrip(".") for e in refused[:5])
            more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
            raise APIError(
                413 if all(e.status == 413 for e in refused) else 400,
                f"{len(refused)} of {len(refs)} images were refused, so nothing was embedded: "
                f"{detail}{more}.",
                param=refused[0].param,
                code=refused[0].code if len({e.code for e in refused}) == 1 else "invalid_image",
            )
        return blobs, sizes

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
