"""Requests through the store: round trips of real workflow transitions, idempotency, version conflicts,
atomicity, listing and timers. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, update

from keyturn import workflow
from keyturn.model import Escalation, EventType, RequestRecord, ReviewDecision, Status
from keyturn.store import (
    ConcurrentUpdate,
    DuplicateIdempotencyKey,
    InvalidCursor,
    NotFound,
    Store,
    StoreError,
)
from keyturn.store import store as store_module
from keyturn.store.schema import decision_records, grants, request_groups, requests

if TYPE_CHECKING:
    from conftest import RequestFactory


def count(store: Store, table: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def grant_row(store: Store, grant_id: str) -> Any:
    with store.engine.connect() as conn:
        return conn.execute(select(grants).where(grants.c.id == grant_id)).one_or_none()


def event_types(store: Store, request_id: str) -> list[str]:
    return [e.type for e in store.events_for_request(request_id)]


def presentation(record: RequestRecord) -> workflow.GrantPresentation:
    assert record.grant is not None
    return workflow.GrantPresentation(
        grant_id=record.grant.id,
        request_id=record.id,
        action=record.request.action,
        resource=record.request.resource,
        params_digest=record.grant.params_digest,
    )


# --- round trips --------------------------------------------------------------------------------------


def test_full_lifecycle_round_trips_through_every_transition(store: Store, factory: RequestFactory) -> None:
    verdict = factory.review_verdict("sre", count=2)
    assert verdict.route is not None  # a runner executes it (a grant binds its holder, or named executors)
    verdict = verdict.model_copy(
        update={"route": verdict.route.model_copy(update={"executors": ("group:runners",)})}
    )
    submitted = factory.submit(verdict)
    stored = store.insert_request(submitted, factory.decision(submitted), None)
    assert stored == submitted.record
    assert store.get(stored.id) == submitted.record
    expected_events = [e.type.value for e in submitted.events]

    record = stored
    for name in ("alice", "bob"):
        step = workflow.review(
            record,
            factory.human(name, "sre"),
            ReviewDecision.APPROVE,
            "ok",
            factory.tick(),
            grant_id=factory.grant_id(),
        )
        record = store.apply(step, expected_version=record.version)
        expected_events += [e.type.value for e in step.events]
        assert store.get(record.id) == step.record

    assert record.status is Status.APPROVED and record.grant is not None
    issued = grant_row(store, record.grant.id)
    assert issued.params_digest == record.grant.params_digest and issued.consumed_at is None
    assert issued.expires_at == record.grant.expires_at

    executor = factory.human("runner", "runners")
    consume = workflow.consume_grant(record, presentation(record), executor, factory.tick())
    record = store.apply(consume, expected_version=record.version)
    expected_events += [e.type.value for e in consume.events]
    consumed = grant_row(store, record.grant.id)
    assert consumed.consumed_at == consume.record.grant.consumed_at  # type: ignore[union-attr]
    assert consumed.consumed_by == executor.id

    done = workflow.report_result(record, executor, True, factory.tick(), output_digest="sha256:ab")
    record = store.apply(done, expected_version=record.version)
    expected_events += [e.type.value for e in done.events]

    final = store.get(record.id)
    assert final == done.record and final.status is Status.SUCCEEDED
    assert workflow.invariant_violations(final) == []
    assert event_types(store, record.id) == expected_events
    assert grant_row(store, record.grant.id).consumed_by == executor.id  # the result left the grant alone


def test_allowed_request_stores_its_grant_at_submit(store: Store, factory: RequestFactory) -> None:
    record = factory.insert(store, factory.allow_verdict())
    assert record.status is Status.ALLOWED and record.grant is not None
    row = grant_row(store, record.grant.id)
    assert row.request_id == record.id and row.consumed_at is None
    assert event_types(store, record.id) == ["request.submitted", "request.allowed", "grant.issued"]


def test_policy_denied_request_has_no_grant_and_no_deadline(store: Store, factory: RequestFactory) -> None:
    from keyturn.model import Decision, Verdict

    record = factory.insert(store, Verdict(decision=Decision.DENY, reason="no"))
    assert store.get(record.id) == record and record.status is Status.DENIED
    assert count(store, grants) == 0
    with store.engine.connect() as conn:
        assert conn.execute(select(requests.c.next_deadline)).scalar_one() is None


def test_get_unknown_request_is_none(store: Store) -> None:
    assert store.get("req_nope") is None


def test_decision_record_is_written_with_the_request(store: Store, factory: RequestFactory) -> None:
    record = factory.insert(store)
    (decision,) = store.decisions(request_id=record.id)
    assert decision.decision == "review" and list(decision.rules) == ["test rule"]
    assert decision.policy_revision == "sha256:test" and decision.ts == record.created_at


def test_record_decision_without_request(store: Store, factory: RequestFactory) -> None:
    from keyturn.store import DecisionRecord

    store.record_decision(
        DecisionRecord(
            ts=factory.now,
            request_id=None,
            request_digest="sha256:" + "1" * 64,
            decision="allow",
            rules=("reads are free", "other"),
            policy_revision="rev",
        )
    )
    (stored,) = store.decisions()
    assert stored.request_id is None and tuple(stored.rules) == ("reads are free", "other")


# --- idempotency --------------------------------------------------------------------------------------


def test_repeated_idempotency_key_returns_original_and_writes_nothing(
    store: Store, factory: RequestFactory
) -> None:
    first = factory.insert(store, idempotency_key="k-1")
    store.set_response(first.id, {"id": first.id, "status": "pending"})
    head, decisions = store.head_seq(), count(store, decision_records)

    again = factory.submit(idempotency_key="k-1", params={"rows": 1})
    with pytest.raises(DuplicateIdempotencyKey) as caught:
        store.insert_request(again, factory.decision(again), {"other": True})
    assert caught.value.record == first
    assert caught.value.response == {"id": first.id, "status": "pending"}
    assert store.get(again.record.id) is None
    assert store.head_seq() == head and count(store, decision_records) == decisions


def test_idempotency_key_is_per_requester_and_optional(store: Store, factory: RequestFactory) -> None:
    factory.insert(store, idempotency_key="same")
    factory.insert(store, idempotency_key="same", requester=factory.human("carol"))
    factory.insert(store)
    factory.insert(store)  # no key: never a duplicate
    assert count(store, requests) == 4


def test_set_response_of_unknown_request(store: Store) -> None:
    with pytest.raises(NotFound):
        store.set_response("req_nope", {})


def test_request_id_collision_is_a_store_error(store: Store, factory: RequestFactory) -> None:
    factory.insert(store, request_id="req_same")
    with pytest.raises(StoreError):
        factory.insert(store, request_id="req_same")
    assert count(store, requests) == 1


# --- versions and grants ------------------------------------------------------------------------------


def test_stale_version_is_a_concurrent_update_and_changes_nothing(
    store: Store, factory: RequestFactory
) -> None:
    record = factory.insert(store)
    cancel = workflow.cancel(record, factory.agent, factory.tick())
    store.apply(cancel, expected_version=record.version)
    head = store.head_seq()

    late = workflow.review(
        record, factory.human("alice", "sre"), ReviewDecision.APPROVE, "", factory.tick(), grant_id="gr_x"
    )
    with pytest.raises(ConcurrentUpdate):
        store.apply(late, expected_version=record.version)
    assert store.get(record.id) == cancel.record
    assert store.head_seq() == head and count(store, grants) == 0


def test_apply_to_unknown_request_is_not_found(store: Store, factory: RequestFactory) -> None:
    transition = factory.submit()
    step = workflow.cancel(transition.record, factory.agent, factory.tick())
    with pytest.raises(NotFound):
        store.apply(step, expected_version=transition.record.version)


def test_transition_must_move_the_version_forward(store: Store, factory: RequestFactory) -> None:
    record = factory.insert(store)
    step = workflow.cancel(record, factory.agent, factory.tick())
    with pytest.raises(StoreError):
        store.apply(step, expected_version=step.record.version)
    assert store.get(record.id) == record


def test_grant_row_guards_consumption_even_when_the_version_matches(
    store: Store, factory: RequestFactory
) -> None:
    """Belt and braces: a grant already marked consumed is never consumed again."""
    record = factory.insert(store, factory.allow_verdict())
    assert record.grant is not None
    with store.engine.begin() as conn:
        conn.execute(
            update(grants)
            .where(grants.c.id == record.grant.id)
            .values(consumed_at=factory.now, consumed_by="x")
        )
    consume = workflow.consume_grant(
        record, presentation(record), factory.agent, factory.tick()
    )  # its holder
    with pytest.raises(ConcurrentUpdate):
        store.apply(consume, expected_version=record.version)
    assert store.get(record.id) == record
    assert grant_row(store, record.grant.id).consumed_by == "x"


# --- atomicity ----------------------------------------------------------------------------------------


class Crash(Exception):
    pass


def crash_on_second_leaf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail while appending events, after the request row (and the first leaf) were already written."""
    real = store_module.leaf_hash
    calls = 0

    def failing(leaf: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Crash
        return real(leaf)

    monkeypatch.setattr(store_module, "leaf_hash", failing)


def test_crash_inside_insert_leaves_nothing(
    store: Store, factory: RequestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_on_second_leaf(monkeypatch)
    transition = factory.submit(factory.allow_verdict(), idempotency_key="k")
    with pytest.raises(Crash):
        store.insert_request(transition, factory.decision(transition), {"x": 1})
    monkeypatch.undo()
    assert store.get(transition.record.id) is None
    assert store.head_seq() == -1 and store.events() == []
    for table in (requests, grants, request_groups, decision_records):
        assert count(store, table) == 0
    # and the key is still free
    retry = factory.insert(store, idempotency_key="k")
    assert store.events_for_request(retry.id)[0].seq == 0


def test_crash_inside_apply_leaves_the_previous_state(
    store: Store, factory: RequestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = factory.insert(store)
    head = store.head_seq()
    approve = workflow.review(
        record, factory.human("alice", "sre"), ReviewDecision.APPROVE, "", factory.tick(), grant_id="gr_1"
    )
    assert len(approve.events) >= 2
    crash_on_second_leaf(monkeypatch)
    with pytest.raises(Crash):
        store.apply(approve, expected_version=record.version)
    monkeypatch.undo()
    assert store.get(record.id) == record
    assert store.head_seq() == head and count(store, grants) == 0
    assert store.apply(approve, expected_version=record.version) == approve.record  # nothing was held


# --- listing ------------------------------------------------------------------------------------------


def test_filters_by_status_requester_and_reviewable_groups(store: Store, factory: RequestFactory) -> None:
    sre = factory.insert(store, factory.review_verdict("sre"))
    security = factory.insert(store, factory.review_verdict("security"))
    both = factory.insert(store, factory.review_verdict("sre", "security"))
    allowed = factory.insert(store, factory.allow_verdict(), requester=factory.human("dan"))

    def ids(**kwargs: Any) -> set[str]:
        records, cursor = store.list_requests(**kwargs)
        assert cursor is None
        return {r.id for r in records}

    assert ids() == {sre.id, security.id, both.id, allowed.id}
    assert ids(status=Status.PENDING) == {sre.id, security.id, both.id}
    assert ids(status=Status.ALLOWED) == {allowed.id}
    assert ids(requester=factory.agent.id) == {sre.id, security.id, both.id}
    assert ids(reviewable_groups={"sre"}) == {sre.id, both.id}
    assert ids(reviewable_groups={"security", "audit"}) == {security.id, both.id}
    assert ids(reviewable_groups={"audit"}) == set()
    assert ids(reviewable_groups=set()) == set()  # no groups: nothing to review, not everything

    # Decided requests keep their groups (approvers can list what was routed to them) but leave the queue.
    store.apply(workflow.cancel(sre, factory.agent, factory.tick()), expected_version=sre.version)
    assert ids(status=Status.PENDING, reviewable_groups={"sre"}) == {both.id}
    assert ids(reviewable_groups={"sre"}) == {sre.id, both.id}


def test_keyset_pagination_neither_repeats_nor_skips(store: Store, factory: RequestFactory) -> None:
    stored = []
    for i in range(13):
        if i % 3:
            factory.now -= timedelta(seconds=1)  # several requests share one created_at: the id breaks ties
        stored.append(factory.insert(store))
    expected = [r.id for r in sorted(stored, key=lambda r: (r.created_at, r.id), reverse=True)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = store.list_requests(limit=4, cursor=cursor)
        seen += [r.id for r in page]
        pages += 1
        if pages == 2:
            factory.insert(store)  # a newer request arriving mid-way does not shift later pages
        if cursor is None:
            break
    assert seen == expected and pages == 4


def test_exact_page_boundary_has_no_next_cursor(store: Store, factory: RequestFactory) -> None:
    for _ in range(4):
        factory.insert(store)
    page, cursor = store.list_requests(limit=4)
    assert len(page) == 4 and cursor is None


@pytest.mark.parametrize("cursor", ["garbage!", "", "bm8tc2VwYXJhdG9y", "MjAzMC0wMS0wN1QwOTowMDowMHxyZXE"])
def test_foreign_cursor_is_refused(store: Store, cursor: str) -> None:
    # the last one is "2030-01-07T09:00:00|req": a naive timestamp, which this store never hands out
    with pytest.raises(InvalidCursor):
        store.list_requests(cursor=cursor)


def test_limit_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError):
        store.list_requests(limit=0)


# --- timers -------------------------------------------------------------------------------------------


def due(now: Any) -> Any:
    def handle(record: RequestRecord) -> workflow.Transition | None:
        try:
            return workflow.due_transition(record, now)
        except workflow.NothingToDo:
            return None

    return handle


def test_process_due_escalates_then_expires(store: Store, factory: RequestFactory) -> None:
    verdict = factory.review_verdict(
        ttl=timedelta(minutes=30),
        escalate=(Escalation(after=timedelta(minutes=5), notify=("teams:oncall",)),),
    )
    record = factory.insert(store, verdict)
    later = factory.insert(store, factory.review_verdict(ttl=timedelta(hours=5)))

    assert store.process_due(record.created_at + timedelta(minutes=4), due(factory.now)) == 0
    at = record.created_at + timedelta(minutes=6)
    assert store.process_due(at, due(at)) == 1
    assert store.get(record.id).escalation_level == 1  # type: ignore[union-attr]
    assert store.process_due(at, due(at)) == 0  # the deadline moved on to the expiry

    at = record.created_at + timedelta(minutes=31)
    assert store.process_due(at, due(at)) == 1
    assert store.get(record.id).status is Status.EXPIRED  # type: ignore[union-attr]
    assert store.get(later.id) == later
    assert event_types(store, record.id)[-2:] == [EventType.ESCALATED.value, EventType.EXPIRED.value]
    assert store.process_due(at + timedelta(days=1), due(at + timedelta(days=1))) == 1  # only `later` is left


def test_one_sweep_expires_a_crowd_in_batches(store: Store, factory: RequestFactory) -> None:
    """Issue #13 §5: 450 requests due at one instant are expired by one sweep, a few transactions in all
    (before: one transaction per request and at most 100 per tick, so waiters learned of it late)."""
    crowd = [factory.insert(store, factory.review_verdict(ttl=timedelta(minutes=1))) for _ in range(450)]
    at = crowd[-1].created_at + timedelta(minutes=2)
    commits: list[None] = []
    listener = lambda _conn: commits.append(None)  # noqa: E731
    sa_event.listen(store.engine, "commit", listener)
    try:
        assert store.process_due(at, due(at)) == 450
    finally:
        sa_event.remove(store.engine, "commit", listener)
    assert {store.get(r.id).status for r in crowd} == {Status.EXPIRED}  # type: ignore[union-attr]
    assert len(commits) <= -(-450 // store_module.DUE_BATCH_SIZE) + 1


def test_process_due_expires_unused_grants(store: Store, factory: RequestFactory) -> None:
    record = factory.insert(store, factory.allow_verdict())
    assert record.grant is not None
    at = record.grant.expires_at
    assert store.process_due(at, due(at)) == 1
    assert store.get(record.id).status is Status.EXPIRED  # type: ignore[union-attr]


def test_process_due_survives_a_failing_handler(store: Store, factory: RequestFactory) -> None:
    bad = factory.insert(store, factory.review_verdict(ttl=timedelta(minutes=1)))
    good = factory.insert(store, factory.review_verdict(ttl=timedelta(minutes=1)))
    at = factory.now + timedelta(hours=1)

    def handle(record: RequestRecord) -> workflow.Transition | None:
        if record.id == bad.id:
            raise RuntimeError("boom")
        return workflow.expire(record, at)

    assert store.process_due(at, handle) == 1
    assert store.get(bad.id) == bad
    assert store.get(good.id).status is Status.EXPIRED  # type: ignore[union-attr]


def test_process_due_none_refreshes_a_stale_deadline(store: Store, factory: RequestFactory) -> None:
    record = factory.insert(store, factory.review_verdict(ttl=timedelta(hours=1)))
    with store.engine.begin() as conn:  # a deadline that the workflow no longer agrees with
        conn.execute(update(requests).values(next_deadline=record.created_at))
    calls: list[str] = []

    def nothing(r: RequestRecord) -> None:
        calls.append(r.id)
        return None

    assert store.process_due(factory.now, nothing) == 0
    assert store.process_due(factory.now, nothing) == 0
    assert calls == [record.id]  # the second sweep no longer saw it as due
    with store.engine.connect() as conn:
        assert conn.execute(select(requests.c.next_deadline)).scalar_one() == record.expires_at
