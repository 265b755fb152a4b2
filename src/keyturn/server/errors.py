"""Every error answer is `{"error": {"code", "message", "detail"}}` with the right HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyturn import metrics
from keyturn.errors import Conflict, Forbidden, NotFound, ServiceError, Unavailable, Unprocessable
from keyturn.identity import AuthenticationError, AuthorizationError
from keyturn.store import StoreUnavailable

log = logging.getLogger("keyturn.server")


def error_response(status: int, code: str, message: str, detail: Any = None, **headers: str) -> JSONResponse:
    metrics.HTTP_ERRORS.labels(code=code).inc()
    body = {"error": {"code": code, "message": message, "detail": detail or {}}}
    return JSONResponse(body, status_code=status, headers=headers or None)


# The HTTP status of each kind of refusal the core makes (keyturn.errors); most specific class first.
_STATUS: tuple[tuple[type[ServiceError], int], ...] = (
    (NotFound, 404),
    (Forbidden, 403),
    (Conflict, 409),
    (Unprocessable, 422),
    (Unavailable, 503),
    (ServiceError, 400),
)


def status_of(exc: ServiceError) -> int:
    return next(status for kind, status in _STATUS if isinstance(exc, kind))


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        where, rest = parts[0], parts[1:]
        return f"{where}.{'.'.join(rest)}" if rest else where
    return ".".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # pydantic prefixes messages of custom validators with "Value error, ": noise for a client
        fields = [
            {
                "field": _field(e["loc"]),
                "message": str(e["msg"]).removeprefix("Value error, "),
                "type": e["type"],
            }
            for e in exc.errors()
        ]
        first = fields[0] if fields else {"field": "body", "message": "invalid request"}
        return error_response(
            422, "invalid_request", f"{first['field']}: {first['message']}", {"fields": fields}
        )

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(status_of(exc), exc.detail.get("code", exc.code), exc.message, exc.detail)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        # the database is down or busy: a retry may well succeed, so say so instead of a 500
        log.warning("database unavailable: %s", exc)
        return error_response(
            503, "unavailable", "the database is unavailable; try again", None, **{"Retry-After": "1"}
        )

    @app.exception_handler(AuthenticationError)
    async def unauthenticated(_: Request, exc: AuthenticationError) -> JSONResponse:
        return error_response(401, "unauthenticated", str(exc), None, **{"WWW-Authenticate": "Bearer"})

    @app.exception_handler(AuthorizationError)
    async def unauthorised(_: Request, exc: AuthorizationError) -> JSONResponse:
        return error_response(403, "forbidden", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the server log")
