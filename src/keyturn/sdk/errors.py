"""Errors of the SDK. Every one is a `KeyturnError`, so `except KeyturnError` catches all of them."""

from __future__ import annotations

from typing import Any

from keyturn.client import ApiError


class KeyturnError(Exception):
    """Base class of every error the SDK raises."""


class ConfigurationError(KeyturnError):
    """The gate cannot be built: no API key, a malformed URL, an invalid option."""


class UnserializableArguments(KeyturnError, TypeError):
    """A guarded call's arguments cannot be sent as JSON params; raised before anything is submitted."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class ServerError(KeyturnError, ApiError):
    """The server answered with an error (`{"error": {code, message, detail}}`): 4xx or a final 5xx."""


class GrantRefused(ServerError):
    """Consuming the grant failed (already consumed, expired, mismatched): the guarded body never runs."""


class Unreachable(KeyturnError):
    """The server could not be reached (after retries). Nothing ran: the gate fails closed."""


class ApprovalTimeout(KeyturnError):
    """No decision within the gate's `timeout`; `request()` and `guard` cancel the request (best effort)."""

    def __init__(self, message: str, request_id: str, view: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.view = view or {}


class NotRunnable(KeyturnError):
    """The request cannot run here: already executing or finished (an idempotent replay), or no grant."""

    def __init__(self, message: str, request_id: str, status: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.status = status


class ParamsMismatch(KeyturnError):
    """The approved params cannot be applied to the function's signature; the call is refused, not guessed."""


class Denied(KeyturnError):
    """The request will never run: denied (by policy or a reviewer), expired, or cancelled.

    `str(denied)` and `denied.for_model()` give one short sentence an LLM can adapt to, e.g.
    "denied by user:dba@example.com: use the staging replica instead".
    """

    def __init__(
        self,
        request_id: str,
        status: str,
        reason: str,
        *,
        reviewer: str | None = None,
        comment: str | None = None,
        view: dict[str, Any] | None = None,
        text: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.status = status
        self.reason = reason
        self.reviewer = reviewer
        self.comment = comment
        self.view = view or {}
        self.text = text or (f"{status}: {reason}" if reason else status)
        super().__init__(self.text)

    def for_model(self) -> str:
        """The text to hand back to a model as the tool's result."""
        return self.text

    def __str__(self) -> str:
        return self.text

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the keyword-only arguments
        return (
            _rebuild_denied,
            (self.request_id, self.status, self.reason, self.reviewer, self.comment, self.text),
        )


def _rebuild_denied(
    request_id: str, status: str, reason: str, reviewer: str | None, comment: str | None, text: str
) -> Denied:
    return Denied(request_id, status, reason, reviewer=reviewer, comment=comment, text=text)
