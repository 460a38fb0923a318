"""Which ``Host`` a loopback-bound server answers (DNS rebinding).

A page on ``http://evil.example`` can re-point its own name at 127.0.0.1; the browser then
sends the page's requests to this server as same-origin, so CORS does not stop it reading the
answers. What gives it away is the ``Host`` header, which still names ``evil.example``. So a
server bound to loopback answers only requests whose ``Host`` is a loopback name
(``localhost``, ``*.localhost``, 127.0.0.0/8, ``[::1]``) or one given with ``--allow-host``;
the rest get 403 naming the flag. A request with no ``Host`` (HTTP/1.0 tools) cannot come
from a browser and is answered. A server bound elsewhere needs an API key or ``--insecure``
already, and is not checked here.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import APIError, send_error


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (what ``--host`` may bind without a key)."""
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port: ``[::1]:7997`` → ``::1``."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class LoopbackHostGuard:
    """403 for a ``Host`` that is neither a loopback name nor in ``allowed``."""

    def __init__(self, app: Any, *, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = {h.lower().rstrip(".") for h in allowed}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        header = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1").strip()
        name = host_name(header).lower().rstrip(".")
        # browsers resolve *.localhost to loopback themselves (RFC 6761), so no page can rebind it
        if scope["type"] not in ("http", "websocket") or not header or is_loopback(name) \
                or name.endswith(".localhost") or name in self.allowed:  # fmt: skip
            await self.app(scope, receive, send)
            return
        error = APIError(
            403,
            f"Host {header!r} is not a loopback name, and this server listens on loopback "
            "only: a web page that points its own name at 127.0.0.1 could otherwise read its "
            f"answers. Use http://localhost or http://127.0.0.1, or start it with --allow-host "
            f"{name} if that name is yours.",
            code="host_not_allowed",
        )
        await send_error(send, error, close=True)
