"""The request limits of ``edgeclip serve`` and the middlewares that bound request bodies and
the requests in flight.

Every limit has a command-line flag (see ``edgeclip.serve.cli``) and is listed in
``docs/serve.md``. ``BodyGuard`` reads each request body completely, before any handler runs:
it refuses a declared or actual size over ``max_body_bytes`` (413) and a body that has not
arrived within ``body_timeout_s`` (408). A slow client therefore holds one coroutine and its
buffered bytes, never the model, a batch slot or a thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from .errors import APIError, send_error

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on one request. The defaults suit a Raspberry Pi class machine."""

    #: bytes of one request body (JSON, multipart); also the largest file read from --allow-dir
    max_body_bytes: int = 16 * MiB
    #: seconds a client gets to send its whole body, from the moment its headers arrived
    body_timeout_s: float = 30.0
    #: images in one /v1/embeddings or /v1/classify request
    max_images: int = 32
    #: texts in one /v1/embeddings request (OpenAI and infinity allow 2048)
    max_texts: int = 2048
    #: characters of one text; shorter texts past 77 tokens are truncated as in the library
    max_text_chars: int = 16384
    #: width x height of one image, checked from its header before it is decoded
    max_pixels: int = 40_000_000
    #: labels in one /v1/classify request
    max_labels: int = 1000
    #: labels x templates in one /v1/classify request (each is one text to embed)
    max_prompts: int = 2048


Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict], Any]


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed length before we run
    return None


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server's limit of {limit:,} bytes "
        "(--max-body-bytes); send fewer or smaller inputs per request.",
        code="body_too_large",
    )


class BodyGuard:
    """ASGI middleware: buffer the whole body under a size limit and a deadline, then replay it."""

    def __init__(self, app: Any, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_error(send, _too_large(self.max_bytes), close=True)
            return
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except asyncio.TimeoutError:
            error = APIError(
                408,
                f"the request body did not arrive within {self.timeout_s:g} s "
                "(--body-timeout); the connection is closed.",
                code="body_timeout",
            )
            await send_error(send, error, close=True)
            return
        except _BodyTooLarge:
            await send_error(send, _too_large(self.max_bytes), close=True)
            return
        except _ClientGone:
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the buffered body once, then waits on the real one (disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class InFlightLimit:
    """ASGI middleware: at most ``limit`` requests in flight; the next gets a JSON 503 with
    ``Retry-After`` naming the flag. (uvicorn's own connection limit, set above this one as a
    last resort, answers a bare ``text/plain`` 503 that clients cannot read.)"""

    def __init__(self, app: Any, *, limit: int | None) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit is None:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            error = APIError(
                503,
                f"this server is answering {self.in_flight} requests at once, its limit "
                "(--max-connections); retry in a moment, or start it with a higher limit.",
                code="too_many_requests_in_flight",
                headers={"Retry-After": "1"},
            )
            await send_error(send, error)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
