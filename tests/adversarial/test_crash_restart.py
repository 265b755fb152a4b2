"""`kill -9` of a server holding 1,000 pending requests while reviews are in flight, then a restart.

After the restart every request is there, a long-poll on a pending one wakes on its review, nothing was
decided twice, and each request's ledger events agree with its stored state.

The 1,000 requests are submitted in-process through `keyturn.service.Keyturn` on the server's own
database (the real policy, workflow and store; only HTTP is skipped, to keep the test fast).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from keyturn.config import load_settings
from keyturn.model import Principal, PrincipalKind, RequestRecord, Status
from keyturn.policy import PolicyHolder
from keyturn.service import Keyturn, Submission
from keyturn.signing_keys import DirectoryKeyRing as KeyRing
from keyturn.store import Store, StoredEvent
from support.live import LiveServer, start_server

PENDING = 1000
REVIEWED = 200  # approvals hammered at the server while it is killed
AGENT = Principal(id="agent:deploy-bot", kind=PrincipalKind.AGENT, groups=frozenset({"bots"}))
REVIEWERS = ("user:alice@example.com", "user:bob@example.com", "user:sam@example.com")

DECISIONS = {"request.approved", "request.denied", "request.expired", "request.cancelled"}


def submit_in_process(server: LiveServer, count: int) -> list[str]:
    settings = load_settings(server.config_path)
    store = Store.open(settings.database)
    try:
        svc = Keyturn(settings, store, PolicyHolder(settings.policy), KeyRing(settings.data_dir))
        return [
            svc.submit(
                AGENT, Submission(action="db.export", resource=f"postgres://prod/t{i}", params={"rows": i})
            ).id
            for i in range(count)
        ]
    finally:
        store.close()


def check_consistent(record: RequestRecord, events: list[StoredEvent]) -> None:
    """The events of one request tell the same story as its stored state, each decision once."""
    types = [e.type for e in events]
    assert types[:2] == ["request.submitted", "request.pending"], (record.id, types)
    counts = Counter(types)
    decisions = [t for t in types if t in DECISIONS]
    assert len(decisions) <= 1, (record.id, types)
    assert counts["request.reviewed"] == len(record.reviews), (record.id, types)
    if record.status is Status.PENDING:
        assert decisions == [], (record.id, types)
    else:
        assert decisions == [f"request.{record.status.value}"], (record.id, types)
    assert counts["grant.issued"] == (1 if record.status is Status.APPROVED else 0), (record.id, types)


@pytest.mark.timeout(180)
def test_kill_9_with_a_thousand_pending_requests(tmp_path: Path) -> None:
    server = start_server(tmp_path / "crash")
    try:
        started = time.monotonic()
        ids = submit_in_process(server, PENDING)
        submit_seconds = time.monotonic() - started
        assert len(set(ids)) == PENDING

        # Reviews race the kill: several reviewers per request, so most attempts are refused (409).
        killed = threading.Event()
        outcomes: Counter[str] = Counter()

        def approve(i: int) -> None:
            if killed.is_set():
                return
            who = REVIEWERS[i % len(REVIEWERS)]
            request_id = ids[(i // len(REVIEWERS)) % REVIEWED]
            try:
                response = http.post(
                    f"{server.url}/v1/actions/{request_id}/reviews",
                    json={"decision": "approve", "comment": "ok"},
                    headers=server.headers(who),
                    timeout=10.0,
                )
                outcomes[str(response.status_code)] += 1
            except httpx.TransportError:
                outcomes["connection lost"] += 1

        def kill_after_some_reviews() -> None:
            while outcomes["200"] < REVIEWED // 4:
                time.sleep(0.01)
            server.kill()
            killed.set()

        killer = threading.Thread(target=kill_after_some_reviews)
        killer.start()
        with httpx.Client(limits=httpx.Limits(max_connections=20)) as http, ThreadPoolExecutor(8) as pool:
            list(pool.map(approve, range(REVIEWED * len(REVIEWERS))))
        killer.join(60)
        assert killed.is_set(), f"the server was never killed: {outcomes}"
        assert outcomes["200"] < REVIEWED, "the kill came too late to interrupt anything"

        server.start()

        store = Store.open(server.database_url)
        try:
            records = {i: store.get(i) for i in ids}
            assert all(r is not None for r in records.values()), "requests lost in the crash"
            events = store.events(limit=100_000)
            assert [e.seq for e in events] == list(range(len(events))), "the ledger has gaps"
            by_request: dict[str, list[StoredEvent]] = {}
            for event in events:
                if event.request_id:
                    by_request.setdefault(event.request_id, []).append(event)
            statuses: Counter[str] = Counter()
            for request_id, record in records.items():
                assert record is not None
                check_consistent(record, by_request[request_id])
                statuses[record.status.value] += 1
        finally:
            store.close()
        assert statuses["approved"] >= REVIEWED // 4
        assert statuses["pending"] >= PENDING - REVIEWED

        # Nothing is decided twice: an approved request refuses another approval after the restart.
        approved = next(i for i, r in records.items() if r is not None and r.status is Status.APPROVED)
        again = httpx.post(
            f"{server.url}/v1/actions/{approved}/reviews",
            json={"decision": "approve"},
            headers=server.headers(REVIEWERS[0]),
        )
        assert again.status_code == 409, again.text

        # Waits resume: a long-poll on a pending request wakes on its review.
        pending = ids[-1]
        outcome: dict[str, object] = {}

        def waiter() -> None:
            with server.client("agent:deploy-bot") as agent:
                outcome["answer"] = agent.wait(pending, timeout=30)["status"]

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)  # let it subscribe (not a timing assert)
        with server.client(REVIEWERS[1]) as bob:
            bob.review(pending, "approve", "after the crash")
        thread.join(10)
        assert outcome["answer"] == "approved"
        print(f"submitted {PENDING} requests in process in {submit_seconds:.2f}s; reviews: {dict(outcomes)}")
    finally:
        server.stop()
