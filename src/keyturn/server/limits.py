"""Refusals made before the application sees a request: bodies too large, NUL in the URL; and the
connection bounds `keyturn serve` gives uvicorn (keyturn.server.run).

`RequestGuard` is plain ASGI, outermost, so it costs no parsing and no worker thread:

- A body larger than `max_body_bytes` is answered 413 `payload_too_large`. A declared `Content-Length`
  is checked before a byte of the body is read; a chunked body is counted as it arrives and refused as
  soon as it passes the limit, so nobody can make the server buffer more than the limit.
- U+0000 in the path or a query parameter is answered 422 naming where it is. No id, cursor or filter of
  this API can contain it, and PostgreSQL refuses it in text (SQLite does not): refusing it here gives the
  same answer on both backends instead of a 500 on one of them.
"""

from __future__ import annotations

import json
import logging
import resource
from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyturn import metrics

log = logging.getLogger("keyturn.server.limits")

LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 by default since Linux 5.4)
MAX_HEAD_BYTES = 16 * 1024  # a request line plus headers; a JWT bearer token fits many times over
FILES_RESERVED = 256  # descriptors kept for the database, the listener, logs, policy and key files


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (every connection is one); the
    limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # not allowed here: keep what there is
            pass
    return soft


def connection_limit(configured: int | None) -> int:
    """`limit_concurrency` for uvicorn: the configured one, but never more connections than the process can
    open files for — past that, accepting fails and clients see resets instead of a clear 503."""
    ceiling = max(1, raise_open_files_limit() - FILES_RESERVED)
    if configured is None or configured > ceiling:
        if configured is not None:
            log.warning(
                "server.limit_concurrency %d is above what %d open files allow; using %d "
                "(raise `ulimit -n` to hold more waiters)",
                configured,
                ceiling + FILES_RESERVED,
                ceiling,
            )
        return ceiling
    return configured


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = _nul_in_url(scope)
        if where is not None:
            await _answer(send, 422, "invalid_request", f"{where}: contains U+0000 (NUL)", {"field": where})
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _answer(send, 413, "payload_too_large", self._too_large(declared), self._detail())
            return
        await self.app(scope, self._counting(receive), send)

    def _too_large(self, size: int | None) -> str:
        got = f" ({size} bytes)" if size is not None else ""
        return f"the request body{got} is larger than the limit of {self.max_body_bytes} bytes"

    def _detail(self) -> dict[str, Any]:
        return {"limit": "max_body_bytes", "max_bytes": self.max_body_bytes}

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    # Raised into the framework's body reading: FastAPI passes an HTTPException through,
                    # and the error handlers answer it as 413 payload_too_large.
                    raise HTTPException(413, self._too_large(None))
            return message

        return counted


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 refuses a malformed Content-Length before we get here
    return None


def _nul_in_url(scope: Scope) -> str | None:
    if "\x00" in scope["path"]:
        return "path"
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return f"query.{name.replace(chr(0), '')}"
    return None


async def _answer(send: Send, status: int, code: str, message: str, detail: dict[str, Any]) -> None:
    metrics.HTTP_ERRORS.labels(code=code).inc()
    body = json.dumps({"error": {"code": code, "message": message, "detail": detail}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))  # the unread body is not worth reading
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
