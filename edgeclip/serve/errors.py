"""Errors of ``edgeclip serve`` in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

This module imports no web framework, so the raw ASGI middlewares (``limits``, ``app``) can send
errors before Starlette is involved.
"""

from __future__ import annotations

import json
from typing import Any, Callable

# OpenAI's "type" for each status; clients branch on the status, humans read the message.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error that becomes one HTTP response: status, message, and which field (``param``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        #: more keys of the error object (``failed``, ``data``): inside it, because the OpenAI
        #: client hands only the error object to code that catches its exceptions (``exc.body``)
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        body = error_body(self.status, self.message, param=self.param, code=self.code)
        body["error"].update(self.extra)
        return body


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": code,
        }
    }


Send = Callable[[dict], Any]


async def send_error(send: Send, error: APIError, *, close: bool = False) -> None:
    """Write ``error`` as a complete JSON response on a raw ASGI ``send``.

    ``close`` adds ``Connection: close``: used when the request body was not read to its end,
    so the connection cannot carry another request.
    """
    payload = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
