"""Typed errors of the store. Callers branch on these, never on SQLAlchemy or driver exceptions."""

from __future__ import annotations

from typing import Any

from keyturn.model import RequestRecord


class StoreError(Exception):
    """Something the store could not do. The base of every error below."""


class StoreUnavailable(StoreError):
    """The database did not answer or stayed locked (connection lost, busy timeout). Worth a retry."""


class NotFound(StoreError):
    """The row a write targets does not exist."""


class ConcurrentUpdate(StoreError):
    """Someone else changed the request first (its version moved, or its grant was already consumed).

    The caller re-reads the request and decides again on the fresh state: that is how every transition is
    applied exactly once.
    """


class DuplicateIdempotencyKey(StoreError):
    """The requester already submitted a request with this idempotency key; nothing was written."""

    def __init__(self, record: RequestRecord, response: dict[str, Any] | None) -> None:
        super().__init__(
            f"{record.request.requester.id} already used idempotency key "
            f"{record.request.idempotency_key!r} for request {record.id}"
        )
        self.record = record
        self.response = response


class InvalidCursor(StoreError, ValueError):
    """A pagination cursor that this store did not hand out."""
