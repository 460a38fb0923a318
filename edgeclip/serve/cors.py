"""``OPTIONS`` and cross-origin requests (CORS, ``--cors-origin``; off by default).

A browser sends a page's request to another origin (a web app on ``http://localhost:3000``
calling ``http://127.0.0.1:7997``) only if the server allows that origin, often after asking
with a *preflight* (``OPTIONS`` with ``Access-Control-Request-Method``). Without
``--cors-origin`` no origin is allowed: a preflight gets 403 whose message names the flag
(browsers show only "CORS error", but the body is in their network panel). A plain
``OPTIONS`` gets 204 with ``Allow``, as HTTP defines it, instead of 405.

The preflight is answered before the API-key check: browsers never send credentials with it.
The requests that follow still need the key. Responses echo the allowed origin (never ``*``,
so they work whatever the page's credentials mode) with ``Vary: Origin``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from .errors import APIError, send_error

MAX_AGE_S = 600  # browsers cache a preflight this long (Chromium caps it at 7200)
# header names a preflight may ask for; echoed, so clients with extra headers (the OpenAI
# JavaScript client sends x-stainless-*) work, and nothing else gets into the answer
_HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origins(values: Iterable[str]) -> tuple[str, ...]:
    """Origins as browsers write them (``scheme://host[:port]``, lower case, no default
    port, no slash), or ``*``; ``ValueError`` naming a value that is not one."""
    out = []
    for value in values:
        if value.strip() == "*":
            out.append("*")
            continue
        parts = urlsplit(value.strip().rstrip("/"))
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path
                or parts.query or parts.fragment or parts.username or port == -1):  # fmt: skip
            raise ValueError(
                f"--cors-origin {value!r} is not an origin; write scheme://host[:port] as the "
                "browser's address bar shows it (e.g. http://localhost:3000), or '*' for any."
            )
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        keep_port = port is not None and port != _DEFAULT_PORTS[parts.scheme]
        out.append(f"{parts.scheme}://{host}{f':{port}' if keep_port else ''}")
    return tuple(dict.fromkeys(out))


class Cors:
    """ASGI middleware: answers every ``OPTIONS`` and adds CORS headers for allowed origins."""

    def __init__(self, app: Any, *, origins: Sequence[str], routes: Sequence[Any]) -> None:
        self.app = app
        self.any = "*" in origins
        self.origins = frozenset(origins)
        self.routes = routes

    def allows(self, origin: str) -> bool:
        return bool(origin) and (self.any or origin.lower() in self.origins)

    def methods(self, scope: dict) -> list[str]:
        """The methods of the route at this path (empty: no such path)."""
        from starlette.routing import Match

        found: set[str] = set()
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                found |= set(route.methods or ())
        return sorted(found | {"OPTIONS"}) if found else []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        origin = headers.get(b"origin", b"").decode("latin-1")
        if scope["method"] == "OPTIONS":
            await self._options(scope, headers, origin, send)
            return
        if not self.allows(origin):
            await self.app(scope, receive, send)
            return
        extra = [*self._origin_headers(origin), (b"access-control-expose-headers", b"retry-after")]

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    def _origin_headers(origin: str) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

    async def _options(self, scope: dict, headers: dict, origin: str, send: Any) -> None:
        methods = self.methods(scope)
        if not methods:
            await send_error(send, APIError(404, f"no endpoint {scope['path']}"))
            return
        preflight = bool(origin) and b"access-control-request-method" in headers
        if preflight and not self.allows(origin):
            await send_error(send, APIError(
                403,
                f"cross-origin requests from {origin} are not allowed here; start edgeclip serve "
                f"with --cors-origin {origin} (repeatable; '*' allows any origin).",
                code="cors_origin_not_allowed",
            ))  # fmt: skip
            return
        allow = ", ".join(methods).encode()
        out = [(b"allow", allow), (b"content-length", b"0")]
        if preflight:
            asked = headers.get(b"access-control-request-headers", b"").decode("latin-1").strip()
            out += self._origin_headers(origin)
            out += [(b"access-control-allow-methods", allow),
                    (b"access-control-max-age", str(MAX_AGE_S).encode())]  # fmt: skip
            if asked and _HEADER_LIST.fullmatch(asked):
                out.append((b"access-control-allow-headers", asked.encode()))
        await send({"type": "http.response.start", "status": 204, "headers": out})
        await send({"type": "http.response.body", "body": b""})
