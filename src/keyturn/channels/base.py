"""The one small interface every approver channel implements (DESIGN §3 "Approver channels").

A channel is transport only: it turns a `Delivery` (built by the dispatcher from an outbox row and the one
redacted view of the request, `keyturn.views`) into a message, and, for interactive channels, turns a
verified inbound callback into a call of the service's review path. It never decides anything and never
sees a secret: the view it is given is already redacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class DeliveryKind(StrEnum):
    POST = "post"  # a request became pending: post the card
    UPDATE = "update"  # a later transition: update the posted card (ref is set)
    ESCALATE = "escalate"  # an escalation step came due: post to the step's targets
    OUTCOME = "outcome"  # tell the on-behalf-of human how it ended (Slack DM, ...)
    EVENT = "event"  # one transition, for event-stream channels (webhooks)
    TEST = "test"  # `keyturn channels test TARGET`


@dataclass(frozen=True)
class MessageRef:
    """Where a posted message lives, so any replica can update it later. Stored in the database."""

    target: str  # the policy's target name, e.g. "slack:#ops-approvals"
    conversation: str  # channel id / conversation id
    message_id: str  # Slack `ts`, Teams activity id
    extra: dict[str, str] = field(default_factory=dict)  # e.g. Teams serviceUrl


@dataclass(frozen=True)
class Delivery:
    id: str  # the outbox row's id: the idempotency key a retried delivery repeats (webhook-id, ...)
    kind: DeliveryKind
    target: str  # e.g. "slack:#ops-approvals", "teams:oncall", "webhook:siem"
    event_type: str  # the ledger event type that caused it, e.g. "request.pending"
    view: dict[str, Any]  # the redacted view of the request (keyturn.views), as every surface shows it
    ref: MessageRef | None = None  # set for UPDATE


class DeliveryFailed(Exception):
    """A delivery did not go through. `retry_after` (seconds) honours the service's own back-off
    (HTTP Retry-After, Slack's 429); `permanent` stops retrying (bad token, 410 Gone, unknown channel);
    `disable` also switches the target off until an admin turns it on again (`keyturn channels enable`):
    a webhook endpoint answering 410 Gone."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
        disable: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent or disable
        self.disable = disable


class Channel(Protocol):
    """One configured target kind. Implementations: slack, teams, webhook."""

    kind: str  # "slack" | "teams" | "webhook"

    async def post(self, delivery: Delivery) -> MessageRef | None:
        """Send a new message; the reference lets later transitions update it (None: nothing to update)."""
        ...

    async def update(self, ref: MessageRef, delivery: Delivery) -> None:
        """Bring a posted message up to date with the request's new state. Idempotent."""
        ...

    async def aclose(self) -> None: ...
