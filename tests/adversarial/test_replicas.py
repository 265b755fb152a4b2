"""Two `keyturn serve` processes on one PostgreSQL database (guarantee 7 across replicas, DESIGN §3).

- a long-poll on replica 1 wakes when a review lands on replica 2 (LISTEN/NOTIFY through the database);
- 200 concurrent consumes of one grant, split across both replicas: exactly one succeeds, every other
  caller gets a clear 4xx, and the ledger holds exactly one `grant.consumed` event.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from conftest import fresh_postgres_schema
from keyturn.store import Store
from support.live import LiveServer, start_server

pytestmark = pytest.mark.postgresql

AGENT = "agent:deploy-bot"
ALICE = "user:alice@example.com"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    """One pair for the module (each start costs seconds); every test works on its own requests."""
    with fresh_postgres_schema() as url:
        first = start_server(tmp_path_factory.mktemp("replicas"), database_url=url)
        try:
            second = first.start_replica()
            yield first, second
        finally:
            first.stop()  # stops the replica too


def test_a_waiter_on_one_replica_wakes_when_the_review_lands_on_the_other(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    one, two = replicas
    with one.client(AGENT) as agent, two.client(ALICE) as alice:
        request_id = agent.submit("db.export", "postgres://prod/customers", {"rows": 10})["id"]
        outcome: dict[str, Any] = {}

        def waiter() -> None:
            with one.client(AGENT) as own:
                outcome["answer"] = own.wait(request_id, timeout=30)
            outcome["at"] = time.monotonic()

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)  # let the long-poll subscribe first (not a timing assert)
        assert thread.is_alive()
        reviewed_at = time.monotonic()
        assert alice.review(request_id, "approve", "ok")["status"] == "approved"
        thread.join(10)
    assert outcome["answer"]["status"] == "approved" and outcome["answer"]["timed_out"] is False
    assert outcome["at"] - reviewed_at < 2.0, "the waiter slept through a review on the other replica"


def test_two_hundred_concurrent_consumes_across_two_replicas_succeed_once(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    one, two = replicas
    with one.client(AGENT) as agent:
        answer = agent.submit("test.allow", "svc://x", {"n": 1})
    grant, request_id = answer["grant"], answer["id"]
    start = threading.Barrier(40)
    token = one.tokens[AGENT]  # a grant binds its holder: the requester (issue #13)

    def consume(i: int) -> tuple[int, str]:
        url = (one if i % 2 else two).url
        if i < 40:
            start.wait()  # the first wave leaves together
        response = http.post(
            url + "/v1/grants/consume",
            json={"grant": grant},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60.0,
        )
        body = response.json()
        code = body["error"]["code"] if "error" in body else "ok"
        return response.status_code, code

    with httpx.Client(limits=httpx.Limits(max_connections=100)) as http, ThreadPoolExecutor(40) as pool:
        outcomes = list(pool.map(consume, range(200)))
    statuses = Counter(outcomes)
    assert statuses[(200, "ok")] == 1, statuses
    assert statuses[(409, "grant_already_consumed")] == 199, statuses

    store = Store.open(one.database_url)
    try:
        consumed = [e for e in store.events_for_request(request_id) if e.type == "grant.consumed"]
        record = store.get(request_id)
    finally:
        store.close()
    assert len(consumed) == 1
    assert record is not None and record.status.value == "executing"
