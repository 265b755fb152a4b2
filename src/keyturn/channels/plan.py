"""Which deliveries a transition causes: a pure function of the transition (no I/O, no clock, no randomness).

The store calls the planner inside the transition's transaction and writes what it returns as outbox rows
(`keyturn.store.outbox`), so the rows commit or roll back with the transition. The rules:

- the submit that makes a request pending: a POST to each interactive `notify` target (Slack, Teams), an
  EVENT (`request.pending`) to each webhook target, and, per escalation step, an ESCALATE row due at
  `submitted + after` to each of the step's targets not notified before;
- each later transition: an UPDATE to every interactive target the request may have been posted to (the
  card shows the new state), an EVENT to every webhook target that was told about the request so far;
- the transition that resolves the request (approved, denied, expired, cancelled) cancels the escalations
  not yet sent, and tells the on-behalf-of human the outcome (OUTCOME, when Slack is configured).

Row ids are derived from (request, version, kind, target): the same transition always plans the same ids,
and the id is the idempotency key every retry repeats (`webhook-id`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from keyturn import workflow
from keyturn.channels.base import DeliveryKind
from keyturn.model import EventType, RequestRecord, Route, Status
from keyturn.redact import Redactor
from keyturn.store.outbox import Plan, PlannedRow, Planner
from keyturn.views import request_view

INTERACTIVE_KINDS = frozenset({"slack", "teams"})  # post a card, then update it
EVENT_KINDS = frozenset({"webhook"})  # one event per transition

# The transitions that end the wait for reviewers.
RESOLVING = frozenset({EventType.APPROVED, EventType.DENIED, EventType.EXPIRED, EventType.CANCELLED})

# One event type per transition: a transition appends several ledger events (reviewed + approved +
# grant.issued); the first of these it contains names it.
_PRIMARY = (
    EventType.APPROVED,
    EventType.DENIED,
    EventType.EXPIRED,
    EventType.CANCELLED,
    EventType.SUCCEEDED,
    EventType.FAILED,
    EventType.GRANT_EXPIRED,
    EventType.GRANT_CONSUMED,
    EventType.ESCALATED,
    EventType.PARAMS_EDITED,
    EventType.REVIEWED,
    EventType.PENDING,
)


@dataclass(frozen=True)
class PlanConfig:
    base_url: str  # for the view an event carries (review_url)
    # The server's keyed redactor, so a channel shows the API's digests; no default (see Dispatcher).
    redactor: Redactor
    outcome_kind: str | None = None  # "slack" when Slack is configured: the on-behalf-of human is told


def target_kind(target: str) -> str:
    return target.split(":", 1)[0]


def primary_event(types: Iterable[EventType]) -> EventType | None:
    present = set(types)
    for candidate in _PRIMARY:
        if candidate in present:
            return candidate
    return None


def row_id(record: RequestRecord, kind: str, target: str) -> str:
    digest = hashlib.sha256(f"{record.id}\x00{record.version}\x00{kind}\x00{target}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def plan(transition: workflow.Transition, config: PlanConfig) -> Plan:
    record = transition.record
    route = record.verdict.route
    types = [e.type for e in transition.events]
    if route is None or not types:
        return Plan()
    if EventType.SUBMITTED in types:
        return _plan_submit(record, route, config) if record.status is Status.PENDING else Plan()
    event = primary_event(types)
    if event is None:
        return Plan()
    rows: list[PlannedRow] = []
    now = record.updated_at
    snapshot: dict[str, object] | None = None
    for target, post_if_missing in _interactive_targets(route):
        rows.append(
            PlannedRow(
                row_id(record, DeliveryKind.UPDATE, target),
                DeliveryKind.UPDATE,
                target,
                event.value,
                now,
                {"post_if_missing": post_if_missing},
            )
        )
    for target in _event_targets(route, record, just_escalated=event is EventType.ESCALATED):
        snapshot = snapshot or request_view(record, base_url=config.base_url, redactor=config.redactor)
        rows.append(
            PlannedRow(
                row_id(record, DeliveryKind.EVENT, target),
                DeliveryKind.EVENT,
                target,
                event.value,
                now,
                {"view": snapshot},
            )
        )
    resolves = bool(RESOLVING & set(types))
    on_behalf_of = record.request.on_behalf_of
    if resolves and on_behalf_of and config.outcome_kind is not None:
        target = f"{config.outcome_kind}:@{on_behalf_of}"
        rows.append(
            PlannedRow(
                row_id(record, DeliveryKind.OUTCOME, target), DeliveryKind.OUTCOME, target, event.value, now
            )
        )
    return Plan(tuple(rows), cancel_escalations=resolves and bool(route.escalate))


def _plan_submit(record: RequestRecord, route: Route, config: PlanConfig) -> Plan:
    rows: list[PlannedRow] = []
    now = record.created_at
    pending = EventType.PENDING.value
    for target in route.notify:
        kind = target_kind(target)
        if kind in EVENT_KINDS:
            view = request_view(record, base_url=config.base_url, redactor=config.redactor)
            rows.append(
                PlannedRow(
                    row_id(record, DeliveryKind.EVENT, target),
                    DeliveryKind.EVENT,
                    target,
                    pending,
                    now,
                    {"view": view},
                )
            )
        else:
            rows.append(
                PlannedRow(row_id(record, DeliveryKind.POST, target), DeliveryKind.POST, target, pending, now)
            )
    told = set(route.notify)
    for level, step in enumerate(route.escalate, start=1):
        for target in step.notify:
            if target in told:
                continue  # already has the card: the ESCALATED transition updates it
            told.add(target)
            rows.append(
                PlannedRow(
                    row_id(record, DeliveryKind.ESCALATE, target),
                    DeliveryKind.ESCALATE,
                    target,
                    EventType.ESCALATED.value,
                    record.created_at + step.after,
                    {"level": level},
                )
            )
    return Plan(tuple(rows))


def _interactive_targets(route: Route) -> list[tuple[str, bool]]:
    """Every interactive target the request may have a card in, and whether a missing card is posted.

    A `notify` target always has (or should have) a card: if its post died, the update posts it. An
    escalation-only target has one only if its step came due before the request resolved; without a
    stored card its update does nothing.
    """
    out: dict[str, bool] = {}
    for target in route.notify:
        if target_kind(target) in INTERACTIVE_KINDS:
            out[target] = True
    for step in route.escalate:
        for target in step.notify:
            if target_kind(target) in INTERACTIVE_KINDS:
                out.setdefault(target, False)
    return sorted(out.items())


def _event_targets(route: Route, record: RequestRecord, *, just_escalated: bool) -> list[str]:
    """Webhook targets told about the request so far: `notify`, and the steps the request has reached
    (the step reached by this very transition gets its own ESCALATE row instead)."""
    targets = [t for t in route.notify if target_kind(t) in EVENT_KINDS]
    reached = record.escalation_level - (1 if just_escalated else 0)
    for step in route.escalate[: max(reached, 0)]:
        targets.extend(t for t in step.notify if target_kind(t) in EVENT_KINDS)
    return sorted(set(targets))


def planner(config: PlanConfig) -> Planner:
    """The store's hook (`Store.planner`)."""

    def _planner(transition: workflow.Transition) -> Plan:
        return plan(transition, config)

    return _planner
