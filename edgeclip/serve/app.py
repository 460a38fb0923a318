"""The ASGI application of ``edgeclip serve``: routes, middlewares and the model's lifespan.

Middlewares, outermost first: ``RequestMetrics`` (counts and times every request, whatever
happens inside), ``Cors`` (``OPTIONS`` and cross-origin headers, before the key: a browser's
preflight carries none), ``ApiKeyAuth`` (before the body is read, so an unauthenticated
client cannot make the server buffer anything) and ``BodyGuard`` (size limit and deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import immich, jina, openai_api, photo_api, photos, weaviate
from .cors import Cors
from .errors import APIError, send_error
from .hostguard import LoopbackHostGuard
from .limits import BodyGuard, InFlightLimit
from .service import ServeConfig, Service

log = logging.getLogger("edgeclip.serve")

# Reachable without the API key: the page (its requests need the key), liveness checks.
PUBLIC_PATHS = frozenset({"/", "/photos", "/health", "/ping", "/favicon.ico",
                          "/.well-known/live", "/.well-known/ready"})  # fmt: skip


class RequestMetrics:
    def __init__(self, app: Any, *, service: Service, endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = service.metrics
        self.endpoints = endpoints

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500  # if the app dies before it answers
        started = time.perf_counter()

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.request_started(endpoint)
        try:
            await self.app(scope, receive, send_and_record)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when --shutdown-timeout runs out, and would
            # log each as a crash: answer 503 if nothing was sent yet, and end quietly.
            if status == 500:
                with contextlib.suppress(Exception):
                    await send_error(send_and_record, APIError(
                        503, "the server is shutting down; retry against a running one.",
                        code="shutting_down"), close=True)  # fmt: skip
            status = 503
        finally:
            self.metrics.request_finished(endpoint, status, time.perf_counter() - started)


class ApiKeyAuth:
    """``Authorization: Bearer <key>`` on every path but ``PUBLIC_PATHS``, compared in constant time."""

    def __init__(self, app: Any, *, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.key is None or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        why = "a wrong API key" if header else "no API key"
        error = APIError(
            401,
            f"this server needs an API key and the request has {why}; send "
            "'Authorization: Bearer <key>'.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await send_error(send, error, close=True)


# -- small endpoints ------------------------------------------------------------------------------


def _service(request: Request) -> Service:
    return request.app.state.service


async def health(request: Request) -> Response:
    svc = _service(request)
    body = {
        "status": "stopping" if svc.stopping else "ok",
        "unix": time.time(),
        "model": svc.model_name,
        "loaded": svc.host.loaded,
        "towers": list(svc.host.towers),
        "in_process": svc.host.in_process,
        "worker_pid": svc.host.worker_pid,
        "auth_required": svc.config.api_key is not None,
        "memory": svc.host.memory(),
        "last_unload": svc.host.last_unload,
        "limits": vars(svc.limits),
    }
    return JSONResponse(body, status_code=503 if svc.stopping else 200)


def _model_object(svc: Service, name: str) -> dict[str, Any]:
    info = svc.host.info or {}
    return {
        "id": name, "object": "model", "created": int(svc.metrics.started),
        "owned_by": "edgeclip", "modalities": ["text", "image"], "loaded": svc.host.loaded,
        "embed_dim": info.get("embed_dim"), "variant": info.get("variant"),
    }  # fmt: skip


async def models(request: Request) -> Response:
    svc = _service(request)
    return JSONResponse(
        {"object": "list", "data": [_model_object(svc, n) for n in svc.listed_names()]}
    )


async def model(request: Request) -> Response:
    """OpenAI's ``GET /v1/models/{model}`` (``client.models.retrieve``)."""
    svc = _service(request)
    name = request.path_params["model_id"]
    try:
        svc.check_model(name)
    except APIError as exc:  # OpenAI answers an unknown model with 404
        return JSONResponse(APIError(404, exc.message, param="model", code=exc.code).body(),
                            status_code=404)  # fmt: skip
    return JSONResponse(_model_object(svc, name))


async def metrics(request: Request) -> Response:
    svc = _service(request)
    memory = svc.host.memory()
    memory_rows = {
        (("process", k),): v for k, v in memory.items() if k != "total" and v is not None
    }
    gauges = {
        "edgeclip_queue_depth": ("inputs waiting for the model, by modality",
                                 {(("modality", "image"),): svc.images.depth,
                                  (("modality", "text"),): svc.texts.depth}),
        "edgeclip_model_loaded": ("1 while the model is loaded", {(): int(svc.host.loaded)}),
        "edgeclip_tower_loaded": ("1 while the tower's graph is open, by tower",
                                  {(("tower", t),): int(t in svc.host.towers)
                                   for t in ("image", "text")}),
        "edgeclip_resident_memory_bytes": ("resident set size by process", memory_rows),
    }  # fmt: skip
    text = svc.metrics.render(gauges)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def page(request: Request) -> Response:
    html = resources.files("edgeclip.serve").joinpath("static/index.html").read_text("utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


# -- errors ---------------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no endpoint {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}; use "
        f"{(exc.headers or {}).get('Allow', 'another method')}.",
    }
    error = APIError(exc.status_code, message.get(exc.status_code, str(exc.detail)))
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    error = APIError(
        500, f"internal error ({type(exc).__name__}); see the server log.", code="internal_error"
    )
    return JSONResponse(error.body(), status_code=500)


# -- the app ----------------------------------------------------------------------------------------


def create_app(config: ServeConfig) -> Starlette:
    """The Starlette app serving ``config``; run it with any ASGI server (``cli`` uses uvicorn)."""
    service = Service(config)
    routes = [
        Route("/", page, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/ping", immich.ping, methods=["GET"]),
        Route("/predict", immich.predict, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),  # infinity's path without the /v1 prefix
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        Route("/v1/embeddings", openai_api.embeddings, methods=["POST"]),
        Route("/embeddings", openai_api.embeddings, methods=["POST"]),
        Route("/v1/classify", openai_api.classify, methods=["POST"]),
        Route("/post", jina.post, methods=["POST"]),  # clip-as-service's HTTP gateway
        Route("/vectorize", weaviate.vectorize, methods=["POST"]),  # Weaviate multi2vec-clip
        Route("/meta", weaviate.meta, methods=["GET"]),
        Route("/.well-known/live", weaviate.live_and_ready, methods=["GET"]),
        Route("/.well-known/ready", weaviate.live_and_ready, methods=["GET"]),
        Route("/photos", photo_api.page, methods=["GET"]),  # photo search (--index)
        Route("/v1/search", photo_api.search, methods=["GET", "POST"]),
        Route("/v1/photos/{photo_id}", photo_api.photo, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        if service.preload_error:
            getattr(app.state, "stop_server", lambda: None)()
        try:
            yield
        finally:
            await service.stop()
            if app.state.photos is not None:
                await asyncio.to_thread(app.state.photos.close)

    endpoints = frozenset(r.path for r in routes)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(RequestMetrics, service=service, endpoints=endpoints),
            Middleware(InFlightLimit, limit=config.max_in_flight),
            *([Middleware(LoopbackHostGuard, allowed=config.allowed_hosts)]
              if config.allowed_hosts is not None else []),  # fmt: skip
            Middleware(Cors, origins=config.cors_origins, routes=routes),
            Middleware(ApiKeyAuth, api_key=config.api_key),
            Middleware(
                BodyGuard,
                max_bytes=config.limits.max_body_bytes,
                timeout_s=config.limits.body_timeout_s,
            ),
        ],  # fmt: skip
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
    app.state.service = service
    app.state.photos = (
        None if config.index is None else photos.PhotoLibrary(config.index, config.limits.max_pixels)
    )
    return app
