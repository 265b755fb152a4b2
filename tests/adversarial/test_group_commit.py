"""Group commit (`keyturn.store.commit`): concurrent writes share one durable commit, and still nothing is
acknowledged before it is on disk.

To make a batch deterministic, each test first holds what every writer needs — the SQLite write lock
(`BEGIN IMMEDIATE` on another connection) or the `ledger_head` row (`SELECT … FOR UPDATE`, as another
replica's append does) — so the first job's transaction waits while the others queue behind it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from sqlalchemy import event
from test_store_concurrency import assert_ledger_is_contiguous, run_together

from keyturn import workflow
from keyturn.ledger.live import verify_store
from keyturn.model import ActionRequest, Decision, Principal, PrincipalKind, RequestRecord, Verdict
from keyturn.store import (
    ConcurrentUpdate,
    DecisionRecord,
    DuplicateIdempotencyKey,
    Store,
    StoreError,
)
from keyturn.store.engine import libpq_conninfo, normalise_url
from keyturn.store.outbox import Plan

if TYPE_CHECKING:
    from conftest import RequestFactory

WRITERS = 16


@contextmanager
def writers_held(url: str) -> Iterator[None]:
    """Hold the lock every write transaction of `url` needs, until the block ends."""
    parsed, backend = normalise_url(url)
    if backend == "sqlite":
        holder = sqlite3.connect(str(parsed.database), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("COMMIT")
            holder.close()
        return
    with psycopg.connect(libpq_conninfo(parsed)) as pg:
        pg.execute("SELECT next_seq FROM ledger_head WHERE id = 1 FOR UPDATE")
        try:
            yield
        finally:
            pg.rollback()


def count_commits(store: Store) -> list[int]:
    commits = [0]

    def counted(_: Any) -> None:
        commits[0] += 1

    event.listen(store.engine, "commit", counted)
    return commits


def run_while_held(store: Store, url: str, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run `calls` on threads at once while writers are held; release once every one of them is queued
    (the first batch, however many it took, is waiting for the lock; the rest will form the second)."""
    outcomes: list[Any] = []
    with writers_held(url):
        runner = threading.Thread(target=lambda: outcomes.extend(run_together(calls)))
        runner.start()
        deadline = time.monotonic() + 30
        if store.committer is not None:
            while store.committer.waiting < len(calls):
                assert time.monotonic() < deadline, f"only {store.committer.waiting} jobs queued"
                time.sleep(0.01)
        else:
            time.sleep(0.5)  # one transaction per caller: all of them are waiting for the lock by now
    runner.join(timeout=60)
    assert not runner.is_alive()
    return outcomes


def cancels(store: Store, factory: RequestFactory, count: int) -> list[tuple[workflow.Transition, int]]:
    pending = [factory.insert(store) for _ in range(count)]
    return [(workflow.cancel(r, factory.agent, factory.tick()), r.version) for r in pending]


@pytest.mark.parametrize("group_commit", [True, False], ids=["grouped", "one-commit-each"])
def test_concurrent_transitions_share_one_commit(
    database_url: str, factory: RequestFactory, group_commit: bool
) -> None:
    store = Store.open(database_url, group_commit=group_commit)
    try:
        store.upgrade()
        work = cancels(store, factory, WRITERS)
        commits = count_commits(store)
        outcomes = run_while_held(store, database_url, [lambda t=t, v=v: store.apply(t, v) for t, v in work])
        assert all(isinstance(o, RequestRecord) for o in outcomes), outcomes
        if group_commit:
            # the batch that waited for the lock, then everyone who queued behind it: not 16 commits
            assert commits[0] <= 2
        else:
            assert commits[0] == WRITERS  # the reference: what the test tells apart
        assert_ledger_is_contiguous(store, 3 * WRITERS)
    finally:
        store.close()


def test_a_failing_job_fails_alone_in_its_batch(
    store: Store, database_url: str, factory: RequestFactory
) -> None:
    good = cancels(store, factory, 10)
    stale_record = factory.insert(store)
    stale = workflow.cancel(stale_record, factory.agent, factory.tick())
    keyed = factory.insert(store, idempotency_key="k-1")
    duplicate_key = factory.submit(idempotency_key="k-1")
    taken_id = factory.submit(request_id=keyed.id)  # same primary key: an integrity error mid-batch
    earlier = factory.submit()
    earlier_decision = factory.decision(earlier)
    store.insert_request(earlier, earlier_decision, None)
    # fails on its decision record, after its request row and grant were written: the savepoint undoes them
    half_written = factory.submit()
    reused_decision = replace(factory.decision(half_written), id=earlier_decision.id)
    new = [factory.submit() for _ in range(3)]
    size_before = store.head_seq() + 1
    commits = count_commits(store)

    calls: list[Callable[[], Any]] = [
        *(lambda t=t, v=v: store.apply(t, v) for t, v in good),
        lambda: store.apply(stale, stale_record.version - 1),
        lambda: store.insert_request(duplicate_key, factory.decision(duplicate_key), None),
        lambda: store.insert_request(taken_id, factory.decision(taken_id), None),
        lambda: store.insert_request(half_written, reused_decision, None),
        *(lambda t=t: store.insert_request(t, factory.decision(t), None) for t in new),
    ]
    outcomes = run_while_held(store, database_url, calls)

    assert commits[0] <= 2  # the batch that waited for the lock and the one queued behind it
    assert all(isinstance(o, RequestRecord) for o in outcomes[:10]), outcomes
    assert isinstance(outcomes[10], ConcurrentUpdate)
    assert isinstance(outcomes[11], DuplicateIdempotencyKey) and outcomes[11].record.id == keyed.id
    assert isinstance(outcomes[12], StoreError) and keyed.id in str(outcomes[12])
    assert isinstance(outcomes[13], StoreError) and half_written.record.id in str(outcomes[13])
    assert all(isinstance(o, RequestRecord) for o in outcomes[14:]), outcomes
    # the failed jobs left nothing; everyone else's writes and events are there, gap-free
    assert store.get(stale_record.id) == stale_record
    assert store.get(keyed.id) == keyed
    assert store.get(half_written.record.id) is None
    assert store.events_for_request(half_written.record.id) == []
    assert [store.get(t.record.id) for t in new] == [t.record for t in new]
    assert_ledger_is_contiguous(store, size_before + 10 + 3 * 2)


def test_the_change_feed_hears_of_a_batch_only_after_its_commit(
    store: Store, database_url: str, factory: RequestFactory
) -> None:
    work = cancels(store, factory, WRITERS)
    expected = {t.record.id: t.record.version for t, _ in work}
    seen: dict[str, int | None] = {}
    stale: list[tuple[str, int | None]] = []  # a wake-up that found the write not yet committed
    heard_all = threading.Event()
    publish = store.feed.publish

    def checked_publish(request_id: str | None) -> None:
        # Read through another connection at the moment of publishing: only a committed write is visible.
        if request_id in expected:
            stored = store.get(request_id)
            version = None if stored is None else stored.version
            if version != expected[request_id]:
                stale.append((request_id, version))
            seen[request_id] = version
            if len(seen) == len(expected):
                heard_all.set()
        publish(request_id)

    store.feed.publish = checked_publish  # type: ignore[method-assign]
    asyncio.run(store.feed.start())  # PostgreSQL: the listener hears the NOTIFY sent at commit
    outcomes = run_while_held(store, database_url, [lambda t=t, v=v: store.apply(t, v) for t, v in work])
    assert all(isinstance(o, RequestRecord) for o in outcomes), outcomes
    assert heard_all.wait(10), seen
    assert seen == expected
    assert stale == []


# --- kill -9 in the middle of a batch -------------------------------------------------------------------

AGENT = Principal(id="agent:deploy-bot", kind=PrincipalKind.AGENT)
ALLOW = Verdict(decision=Decision.ALLOW, policy_revision="sha256:test")
STUCK_AT = 120  # the planner call (one per submit) that hangs inside its batch's transaction


def _submit_until_killed(url: str, log_path: str) -> None:
    """A child process: 16 threads submit without end; each acknowledged id goes to `log_path` (one
    unbuffered write, in the kernel before the next submit). The planner hangs at its STUCK_AT-th call,
    inside an open batch, after logging which request it was planning."""
    store = Store.open(url)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    planned = iter(range(10**9))
    lock = threading.Lock()

    def planner(transition: workflow.Transition) -> Plan:
        with lock:
            n = next(planned)
        if n == STUCK_AT:
            os.write(log, f"stuck {transition.record.id}\n".encode())
            time.sleep(3600)
        return Plan()

    store.planner = planner

    def submit_forever(worker: int) -> None:
        for n in range(10**9):
            request = ActionRequest(action="db.export", resource=f"t{worker}/{n}", requester=AGENT)
            now = datetime.now(UTC)
            transition = workflow.submit(f"req_{worker:02d}_{n:06d}", request, ALLOW, now, f"gr_{worker}_{n}")
            decision = DecisionRecord(
                ts=now,
                request_id=transition.record.id,
                request_digest="sha256:" + "0" * 64,
                decision="allow",
                rules=[],
                policy_revision="sha256:test",
            )
            store.insert_request(transition, decision, None)
            os.write(log, f"acked {transition.record.id}\n".encode())

    threads = [threading.Thread(target=submit_forever, args=(w,), daemon=True) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_kill_9_mid_batch_acknowledges_nothing_it_did_not_commit(database_url: str, tmp_path: Path) -> None:
    setup = Store.open(database_url)
    setup.upgrade()
    setup.close()
    log_path = tmp_path / "acks.log"
    log_path.write_text("")
    child = multiprocessing.get_context("spawn").Process(
        target=_submit_until_killed, args=(database_url, str(log_path))
    )
    child.start()
    try:
        deadline = time.monotonic() + 60
        while "stuck" not in log_path.read_text():
            assert child.is_alive() and time.monotonic() < deadline, "the child never reached its batch"
            time.sleep(0.05)
        time.sleep(0.3)  # let the other writers queue up behind the hung batch
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=10)
    finally:
        if child.is_alive():
            child.kill()
    lines = log_path.read_text().splitlines()
    acked = [line.split()[1] for line in lines if line.startswith("acked ")]
    stuck = next(line.split()[1] for line in lines if line.startswith("stuck "))
    assert len(acked) >= STUCK_AT // 2

    after = Store.open(database_url)
    try:
        missing = [rid for rid in acked if after.get(rid) is None]
        assert missing == []  # every acknowledged submit survived the kill
        assert after.get(stuck) is None  # the batch that was being written left nothing
        assert stuck not in acked
        result = verify_store(after, [], [])
        assert result.problem is None, result.problem
        stored_events = after.events(limit=10**6)
        assert_ledger_is_contiguous(after, len(stored_events))
        # each stored request has its whole submit in the ledger, and the ledger no request that is not stored
        in_ledger = {e.request_id for e in stored_events}
        stored, _ = after.list_requests(limit=10**6)
        assert in_ledger == {r.id for r in stored}
        assert {e.type for e in stored_events} <= {"request.submitted", "request.allowed", "grant.issued"}
    finally:
        after.close()


def test_a_closed_store_writes_again_like_a_disposed_engine(store: Store, factory: RequestFactory) -> None:
    first = factory.insert(store)
    assert store.committer is not None
    store.close()  # stops the writer thread; the next write starts another
    second = factory.insert(store)
    assert store.get(first.id) == first and store.get(second.id) == second


@pytest.mark.postgresql
def test_a_child_forked_mid_write_writes_on_its_own(postgres_url: str, factory: RequestFactory) -> None:
    """The child inherits the write turn held by a parent's thread, but not that thread: without starting
    afresh it would wait for it forever. (PostgreSQL only: SQLite itself forbids carrying an open database
    across a fork, and this test holds one open in the parent.)"""
    store = Store.open(postgres_url)
    store.upgrade()
    assert store.committer is not None
    pending = factory.insert(store)
    cancel = workflow.cancel(pending, factory.agent, factory.tick())
    child_submit = factory.submit()
    with writers_held(postgres_url):
        writer = threading.Thread(target=store.apply, args=(cancel, pending.version))
        writer.start()
        while store.committer.waiting < 1:
            time.sleep(0.01)
        pid = os.fork()
        if pid == 0:  # the child: its own connections, then its own write
            try:
                store.engine.dispose(close=False)
                store.insert_request(child_submit, factory.decision(child_submit), None)
            finally:
                os._exit(0 if store.get(child_submit.record.id) is not None else 1)
    writer.join(30)
    deadline = time.monotonic() + 30
    while (status := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if status == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child never wrote")
    try:
        assert os.waitstatus_to_exitcode(status[1]) == 0
        assert store.get(child_submit.record.id) == child_submit.record
    finally:
        store.close()
