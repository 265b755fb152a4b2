"""The outbox and the dispatcher on both backends, with a real webhook receiver on loopback.

Transitions are made through the real workflow and stored through the real store with the real planner;
the dispatcher runs in-process (the live-server tests in tests/adversarial cover the whole server).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from conftest import RequestFactory
from keyturn import workflow
from keyturn.channels.base import Delivery, MessageRef
from keyturn.channels.dispatcher import Dispatcher
from keyturn.channels.plan import PlanConfig, planner
from keyturn.channels.webhook import Endpoint, WebhookChannel
from keyturn.config import DeliverySettings
from keyturn.model import Escalation, RequestRecord, ReviewDecision
from keyturn.redact import UNKEYED
from keyturn.store import ConcurrentUpdate, Store, StoreError
from keyturn.store.outbox import Outbox
from support.webhook_receiver import SECRET, Received, WebhookReceiver

FAST = DeliverySettings(retry_schedule=[timedelta(seconds=0.2)] * 12, jitter=0.1, lease=timedelta(seconds=5))


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def now_factory(factory: RequestFactory, monkeypatch: pytest.MonkeyPatch) -> RequestFactory:
    """Transitions at the real time: the dispatcher's clock is the real one."""

    def tick(seconds: float = 0.0) -> datetime:
        factory.now = datetime.now(UTC)
        return factory.now

    monkeypatch.setattr(factory, "tick", tick)
    return factory


def routed(
    factory: RequestFactory, store: Store, *targets: str, escalate: tuple[Escalation, ...] = ()
) -> RequestRecord:
    verdict = factory.review_verdict("sre", escalate=escalate)
    assert verdict.route is not None
    verdict = verdict.model_copy(update={"route": verdict.route.model_copy(update={"notify": targets})})
    return factory.insert(store, verdict)


def approve(factory: RequestFactory, store: Store, record: RequestRecord) -> RequestRecord:
    transition = workflow.review(
        record,
        factory.human("alice", "sre"),
        ReviewDecision.APPROVE,
        "ok",
        factory.tick(),
        grant_id=factory.grant_id(),
    )
    return store.apply(transition, expected_version=record.version)


@asynccontextmanager
async def dispatching(
    store: Store, receivers: dict[str, WebhookReceiver], settings: DeliverySettings = FAST
) -> AsyncIterator[Dispatcher]:
    endpoints = {name: Endpoint(name, r.url, Webhook(SECRET), None) for name, r in receivers.items()}
    channel = WebhookChannel(endpoints, base_url="http://keyturn.test", timeout=5)
    dispatcher = Dispatcher(store, {"webhook": channel}, settings, "http://keyturn.test", UNKEYED)
    await store.feed.start()
    task = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.aclose()
        await store.feed.stop()


async def wait_for(receiver: WebhookReceiver, condition: Any, timeout: float = 30.0) -> list[Received]:
    return await asyncio.to_thread(receiver.wait_for, condition, timeout)


@pytest.fixture
def planned(store: Store) -> Store:
    store.planner = planner(PlanConfig(base_url="http://keyturn.test", redactor=UNKEYED))
    return store


# --- the outbox is written with the transition, or not at all -----------------------------------------


def test_a_rolled_back_transition_writes_no_row(
    planned: Store, now_factory: RequestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(planned)
    record = routed(now_factory, planned, "webhook:siem")
    assert [r.event_type for r in outbox.list_rows()] == ["request.pending"]

    # a transition that loses the race writes nothing
    stale = workflow.review(
        record, now_factory.human("bob", "sre"), ReviewDecision.DENY, "no", now_factory.tick(), grant_id="g"
    )
    approve(now_factory, planned, record)
    with pytest.raises(ConcurrentUpdate):
        planned.apply(stale, expected_version=record.version)
    assert sorted(r.event_type for r in outbox.list_rows()) == ["request.approved", "request.pending"]

    # a failure after the rows were written (here: the ledger append) rolls them back with the transition
    def broken(*_: Any) -> None:
        raise StoreError("the ledger append failed")

    monkeypatch.setattr(planned, "_append_events", broken)
    with pytest.raises(StoreError):
        routed(now_factory, planned, "webhook:siem")
    assert len(outbox.list_rows()) == 2


def test_resolving_a_request_cancels_its_escalations_in_the_same_transaction(
    planned: Store, now_factory: RequestFactory
) -> None:
    step = Escalation(after=timedelta(minutes=5), notify=("webhook:pager",))
    record = routed(now_factory, planned, "webhook:siem", escalate=(step,))
    outbox = Outbox(planned)
    [escalation] = [r for r in outbox.list_rows() if r.kind == "escalate"]
    assert escalation.status == "pending" and escalation.due_at == record.created_at + timedelta(minutes=5)
    approve(now_factory, planned, record)
    assert outbox.get(escalation.id).status == "cancelled"  # type: ignore[union-attr]


# --- delivery -----------------------------------------------------------------------------------------


def test_receiver_down_then_throttling_loses_nothing_and_keeps_order(
    planned: Store, now_factory: RequestFactory, receiver: WebhookReceiver
) -> None:
    def flaky(attempt: int) -> tuple[int, dict[str, str]]:
        if attempt <= 12:
            return 503, {}
        if attempt <= 16:
            return 429, {"Retry-After": "1"}
        return 200, {}

    receiver.respond = flaky

    async def scenario() -> list[Received]:
        async with dispatching(planned, {"siem": receiver}):
            records = [routed(now_factory, planned, "webhook:siem") for _ in range(5)]
            for record in records:
                await asyncio.to_thread(approve, now_factory, planned, record)
            return await wait_for(receiver, lambda got: len(got) >= 10)

    got = asyncio.run(scenario())
    assert all(r.v1_ok for r in receiver.received)
    assert any(r.status == 503 for r in receiver.received) and any(r.status == 429 for r in receiver.received)
    assert len({r.id for r in got}) == 10  # each delivery accepted once
    per_request: dict[str, list[str]] = {}
    for r in got:
        per_request.setdefault(r.json["data"]["id"], []).append(r.json["type"])
    assert list(per_request.values()) == [["request.pending", "request.approved"]] * 5
    # a retried delivery repeats its id: every attempt's id is one of the delivered ones
    assert {r.id for r in receiver.received} == {r.id for r in got}
    statuses = Outbox(planned).count_by_status()
    assert statuses == {"done": 10}


def test_the_last_failed_attempt_marks_the_row_dead_and_retry_replays_it(
    planned: Store, now_factory: RequestFactory, receiver: WebhookReceiver
) -> None:
    receiver.respond = lambda attempt: (500, {}) if attempt <= 3 else (200, {})
    settings = FAST.model_copy(update={"retry_schedule": [timedelta(seconds=0.1)] * 2})
    outbox = Outbox(planned)

    async def scenario() -> None:
        async with dispatching(planned, {"siem": receiver}, settings):
            routed(now_factory, planned, "webhook:siem")
            for _ in range(200):
                if outbox.count_by_status().get("dead"):
                    break
                await asyncio.sleep(0.05)
            [dead] = outbox.list_rows(status="dead")
            assert dead.attempts == 3 and dead.last_error is not None and "500" in dead.last_error
            assert outbox.retry_dead(datetime.now(UTC)) == 1
            got = await wait_for(receiver, lambda got: len(got) >= 1)
            assert got[0].id == dead.id  # the replay carries the same webhook-id

    asyncio.run(scenario())
    assert [r.status for r in receiver.received] == [500, 500, 500, 200]


def test_410_gone_disables_the_endpoint_until_enabled(
    planned: Store, now_factory: RequestFactory, receiver: WebhookReceiver
) -> None:
    receiver.respond = lambda attempt: (410, {}) if attempt == 1 else (200, {})
    outbox = Outbox(planned)

    async def scenario() -> None:
        async with dispatching(planned, {"siem": receiver}):
            routed(now_factory, planned, "webhook:siem")
            for _ in range(200):
                if outbox.count_by_status().get("dead"):
                    break
                await asyncio.sleep(0.05)
            assert "webhook:siem" in outbox.disabled_targets()
            routed(now_factory, planned, "webhook:siem")  # while disabled: not sent, dead at once
            for _ in range(200):
                if outbox.count_by_status().get("dead") == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(receiver.received) == 1
            dead = outbox.list_rows(status="dead")
            assert any("target disabled" in (r.last_error or "") for r in dead)
            assert outbox.enable_target("webhook:siem")
            assert outbox.retry_dead(datetime.now(UTC)) == 2
            await wait_for(receiver, lambda got: len(got) >= 2)

    asyncio.run(scenario())
    assert Outbox(planned).count_by_status() == {"done": 2}


def test_an_escalation_is_delivered_at_its_time_and_never_after_the_request_resolved(
    planned: Store, now_factory: RequestFactory, receiver: WebhookReceiver
) -> None:
    pager = WebhookReceiver().start()
    step = Escalation(after=timedelta(seconds=1.5), notify=("webhook:pager",))
    try:

        async def scenario() -> tuple[RequestRecord, RequestRecord]:
            async with dispatching(planned, {"siem": receiver, "pager": pager}):
                waits = routed(now_factory, planned, "webhook:siem", escalate=(step,))
                resolved = routed(now_factory, planned, "webhook:siem", escalate=(step,))
                await asyncio.to_thread(approve, now_factory, planned, resolved)
                await wait_for(pager, lambda got: len(got) >= 1)
                await asyncio.sleep(2.0)  # the resolved request's escalation time passes too
                return waits, resolved

        waits, resolved = asyncio.run(scenario())
    finally:
        pager.stop()
    [escalation] = pager.received
    assert escalation.json["type"] == "request.escalated" and escalation.json["data"]["id"] == waits.id
    assert escalation.at >= (waits.created_at + step.after).timestamp()
    rows = {r.request_id: r.status for r in Outbox(planned).list_rows() if r.kind == "escalate"}
    assert rows == {waits.id: "done", resolved.id: "cancelled"}


# --- message references: interactive channels -----------------------------------------------------------


class CardChannel:
    """An interactive channel's contract as the dispatcher sees it (Slack and Teams implement it for real
    against their APIs): `post` returns where the card is, `update` is given that reference back."""

    kind = "slack"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str | None]] = []  # (call, target, status, ref message id)
        self.posted = 0

    async def post(self, delivery: Delivery) -> MessageRef | None:
        self.posted += 1
        self.calls.append(("post", delivery.target, delivery.view["status"], None))
        return MessageRef(delivery.target, "C123", f"ts-{self.posted}", {"team": "T1"})

    async def update(self, ref: MessageRef, delivery: Delivery) -> None:
        self.calls.append(("update", delivery.target, delivery.view["status"], ref.message_id))

    async def aclose(self) -> None:
        pass


def test_any_replica_updates_the_card_another_one_posted(planned: Store, now_factory: RequestFactory) -> None:
    step = Escalation(after=timedelta(hours=1), notify=("slack:#oncall",))
    first, second = CardChannel(), CardChannel()

    async def run_one(channel: CardChannel, until: Any) -> None:
        dispatcher = Dispatcher(planned, {"slack": channel}, FAST, "http://keyturn.test", UNKEYED)  # type: ignore[dict-item]
        await planned.feed.start()
        task = asyncio.create_task(dispatcher.run())
        try:
            for _ in range(400):
                if until():
                    break
                await asyncio.sleep(0.025)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await planned.feed.stop()

    record = routed(now_factory, planned, "slack:#ops", escalate=(step,))
    asyncio.run(run_one(first, lambda: first.calls))
    approve(now_factory, planned, record)  # decided elsewhere; another replica picks up the update
    outbox = Outbox(planned)
    asyncio.run(run_one(second, lambda: outbox.count_by_status().get("pending", 0) == 0))
    assert first.calls == [("post", "slack:#ops", "pending", None)]
    # the card posted by the first replica is updated through its stored reference; the escalation
    # target, whose step never came, has no card and gets none
    assert second.calls == [("update", "slack:#ops", "approved", "ts-1")]
    ref = outbox.ref(record.id, "slack:#ops")
    assert ref is not None and (ref.conversation, ref.message_id, ref.extra) == (
        "C123",
        "ts-1",
        {"team": "T1"},
    )
    assert outbox.count_by_status() == {"done": 3, "cancelled": 1}
