"""What the core answers a caller who asked for something it will not do.

These errors know no transport: the REST API maps each class to an HTTP status (keyturn.server.errors),
the CLI to an exit code and a line, a chat channel to an ephemeral message. `code` is stable and
machine-readable; `detail` may name the `field` at fault and carry the workflow's precise `code`.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """The request is malformed or refers to something invalid (a bad cursor, a bad time)."""

    code = "bad_request"

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or {}


class NotFound(ServiceError):
    """Absent, or not visible to this caller (the same answer for both: ids are not an oracle)."""

    code = "not_found"


class Forbidden(ServiceError):
    """This caller may not do this (self review, an agent reviewing, not qualified, not the executor)."""

    code = "forbidden"


class Conflict(ServiceError):
    """The request's state does not allow it (decided, expired, grant consumed or mismatched)."""

    code = "conflict"


class Unprocessable(ServiceError):
    """Well-formed input the lifecycle refuses for what it says (a deny without reason, a refused edit)."""

    code = "unprocessable"


class Unavailable(ServiceError):
    """A dependency cannot serve now (a brokered secret without a value, contention); a retry may work."""

    code = "unavailable"
