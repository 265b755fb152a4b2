"""Concurrency: gap-free ledger sequence, exactly-once grant consumption, timers that never double-process,
racing idempotent submits. Threads on both backends; separate processes (separate engines, like separate
replicas) too."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from keyturn import workflow
from keyturn.model import Decision, EventType, RequestRecord, ReviewDecision, Status, Verdict
from keyturn.store import ConcurrentUpdate, DecisionRecord, DuplicateIdempotencyKey, Store

if TYPE_CHECKING:
    from conftest import RequestFactory

T = TypeVar("T")


def run_together(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run every call on its own thread, released at the same instant; exceptions are returned."""
    barrier = threading.Barrier(len(calls))

    def one(call: Callable[[], T]) -> T | BaseException:
        barrier.wait()
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(one, calls))


def assert_ledger_is_contiguous(store: Store, expected_size: int) -> None:
    stored = store.events(limit=10**6)
    assert [e.seq for e in stored] == list(range(expected_size))
    assert store.head_seq() == expected_size - 1
    for event in stored:
        assert event.leaf_hash == hashlib.sha256(b"\x00" + event.leaf_bytes()).hexdigest()


RUNNERS_MAY_CONSUME = Verdict(
    decision=Decision.ALLOW, policy_revision="sha256:test", executors=("group:runners",)
)


def consume_transition(factory: RequestFactory, record: RequestRecord, executor: str) -> workflow.Transition:
    assert record.grant is not None
    presented = workflow.GrantPresentation(
        grant_id=record.grant.id,
        request_id=record.id,
        action=record.request.action,
        resource=record.request.resource,
        params_digest=record.grant.params_digest,
    )
    # the runners are the executors the verdict names (a grant binds its holder)
    return workflow.consume_grant(record, presented, factory.human(executor, "runners"), factory.now)


# --- worker processes (top level, so that spawned children can import them) -------------------------


def _insert_in_child(
    url: str, work: list[tuple[workflow.Transition, DecisionRecord]], start: Any, threads: int
) -> None:
    store = Store.open(url)
    try:
        start.wait()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda item: store.insert_request(item[0], item[1], None), work))
    finally:
        store.close()


def _consume_in_child(
    url: str, attempts: list[workflow.Transition], expected_version: int, start: Any, results: Any
) -> None:
    store = Store.open(url)
    try:
        calls = [lambda t=t: store.apply(t, expected_version) for t in attempts]  # type: ignore[misc]
        start.wait()
        outcomes = run_together(calls)
        won = [o.executor for o in outcomes if isinstance(o, RequestRecord)]
        lost = sum(isinstance(o, ConcurrentUpdate) for o in outcomes)
        other = [repr(o) for o in outcomes if not isinstance(o, RequestRecord | ConcurrentUpdate)]
        results.put((won, lost, other))
    finally:
        store.close()


def spawn(target: Callable[..., None], *args: Any) -> multiprocessing.process.BaseProcess:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    return process


# --- sequence numbers ---------------------------------------------------------------------------------


def test_seq_is_contiguous_under_concurrent_writers(store: Store, factory: RequestFactory) -> None:
    pending = [factory.insert(store) for _ in range(10)]
    submits = [factory.submit() for _ in range(60)]
    cancels = [workflow.cancel(r, factory.agent, factory.tick()) for r in pending]
    calls: list[Callable[[], RequestRecord]] = [
        *(lambda t=t: store.insert_request(t, factory.decision(t), None) for t in submits),
        *(lambda c=c, r=r: store.apply(c, r.version) for c, r in zip(cancels, pending, strict=True)),
    ]
    outcomes = run_together(calls)
    assert all(isinstance(o, RequestRecord) for o in outcomes), outcomes
    assert_ledger_is_contiguous(store, 2 * 10 + 2 * 60 + 10)


def test_seq_is_contiguous_across_processes(database_url: str, store: Store, factory: RequestFactory) -> None:
    batches = [[(t, factory.decision(t)) for t in (factory.submit() for _ in range(30))] for _ in range(2)]
    start = multiprocessing.get_context("spawn").Barrier(2)
    children = [spawn(_insert_in_child, database_url, batch, start, 6) for batch in batches]
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    assert_ledger_is_contiguous(store, 2 * 30 * 2)
    assert {e.request_id for e in store.events(limit=1000)} == {t.record.id for b in batches for t, _ in b}


# --- exactly-once consumption -------------------------------------------------------------------------


def test_200_concurrent_consumers_exactly_one_wins(store: Store, factory: RequestFactory) -> None:
    record = factory.insert(store, RUNNERS_MAY_CONSUME)
    factory.tick()
    attempts = [consume_transition(factory, record, f"runner{i}") for i in range(200)]
    outcomes = run_together([lambda t=t: store.apply(t, record.version) for t in attempts])

    winners = [o for o in outcomes if isinstance(o, RequestRecord)]
    assert len(winners) == 1
    assert all(isinstance(o, ConcurrentUpdate) for o in outcomes if o is not winners[0])
    stored = store.get(record.id)
    assert stored == winners[0] and stored.status is Status.EXECUTING
    consumed = [e for e in store.events_for_request(record.id) if e.type == EventType.GRANT_CONSUMED]
    assert len(consumed) == 1 and consumed[0].actor == stored.executor


def test_200_consumers_in_two_processes_exactly_one_wins(
    database_url: str, store: Store, factory: RequestFactory
) -> None:
    record = factory.insert(store, RUNNERS_MAY_CONSUME)
    factory.tick()
    attempts = [consume_transition(factory, record, f"runner{i}") for i in range(200)]
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    children = [
        spawn(_consume_in_child, database_url, attempts[half::2], record.version, start, results)
        for half in (0, 1)
    ]
    reports = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0

    won = [who for w, _, _ in reports for who in w]
    assert [other for _, _, other in reports] == [[], []]
    assert len(won) == 1 and sum(lost for _, lost, _ in reports) == 199
    stored = store.get(record.id)
    assert stored is not None and stored.executor == won[0]
    assert [e.type for e in store.events_for_request(record.id)].count(EventType.GRANT_CONSUMED) == 1


def test_racing_transitions_of_one_request_exactly_one_applies(store: Store, factory: RequestFactory) -> None:
    """Without a grant to guard it, only the version check stands between 100 deciders."""
    record = factory.insert(store, factory.review_verdict("sre"))
    now = factory.tick()
    steps = [workflow.cancel(record, factory.agent, now, "changed my mind")] + [
        workflow.review(
            record, factory.human(f"r{i}", "sre"), ReviewDecision.APPROVE, "", now, grant_id=f"gr_{i}"
        )
        for i in range(99)
    ]
    outcomes = run_together([lambda t=t: store.apply(t, record.version) for t in steps])

    winners = [o for o in outcomes if isinstance(o, RequestRecord)]
    assert len(winners) == 1 and sum(isinstance(o, ConcurrentUpdate) for o in outcomes) == 99
    assert store.get(record.id) == winners[0]
    assert len(store.events_for_request(record.id)) == 2 + len(steps[outcomes.index(winners[0])].events)


# --- timers -------------------------------------------------------------------------------------------


def test_two_timer_workers_never_process_a_request_twice(
    database_url: str, store: Store, factory: RequestFactory
) -> None:
    records = [factory.insert(store, factory.review_verdict(ttl=timedelta(minutes=1))) for _ in range(40)]
    at = factory.now + timedelta(hours=1)
    handled: list[str] = []

    def handle(record: RequestRecord) -> workflow.Transition | None:
        handled.append(record.id)
        time.sleep(0.003)  # hold the row a little, so the workers really overlap
        return workflow.expire(record, at)

    replicas = [Store.open(database_url) for _ in range(2)]
    try:
        counts = run_together([lambda s=s: s.process_due(at, handle) for s in replicas])
    finally:
        for replica in replicas:
            replica.close()

    assert sum(counts) == 40  # type: ignore[arg-type]
    assert sorted(handled) == sorted(r.id for r in records)  # handled once each, never twice
    expired = Counter(e.request_id for e in store.events(limit=1000) if e.type == EventType.EXPIRED)
    assert expired == {r.id: 1 for r in records}
    assert_ledger_is_contiguous(store, 40 * 2 + 40)


# --- idempotency under a race -------------------------------------------------------------------------


def test_racing_submits_with_one_key_store_one_request(store: Store, factory: RequestFactory) -> None:
    submits = [factory.submit(idempotency_key="same-key") for _ in range(20)]
    outcomes = run_together([lambda t=t: store.insert_request(t, factory.decision(t), None) for t in submits])

    stored = [o for o in outcomes if isinstance(o, RequestRecord)]
    assert len(stored) == 1
    duplicates = [o for o in outcomes if isinstance(o, DuplicateIdempotencyKey)]
    assert len(duplicates) == 19 and all(d.record == stored[0] for d in duplicates)
    assert store.list_requests()[0] == stored
    assert_ledger_is_contiguous(store, 2)
