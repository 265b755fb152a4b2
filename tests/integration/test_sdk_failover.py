"""An SDK waiter resumes on another replica when its own is gone (issue #13 §5).

Two `keyturn serve` replicas on one PostgreSQL database behind a loopback TCP load balancer
(tests/support/tcp_proxy.py). An agent waits through the balancer; the replica holding its stream is
killed (kill -9); a human approves on the surviving replica; the wait returns `approved` — it reconnected
through the balancer, with backoff, within its own timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import fresh_postgres_schema
from keyturn.sdk import Gate
from support.live import LiveServer, start_server
from support.tcp_proxy import TcpProxy

AGENT = "agent:deploy-bot"
ALICE = "user:alice@example.com"


@pytest.fixture
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TcpProxy, list[LiveServer]]]:
    with fresh_postgres_schema() as url:
        first = start_server(tmp_path_factory.mktemp("failover"), database_url=url, timeout=120)
        try:
            second = first.start_replica(timeout=120)
            servers = [first, second]
            with TcpProxy([("127.0.0.1", s.port) for s in servers]) as balancer:
                yield balancer, servers
        finally:
            for server in (first, *first.replicas):
                server.kill()


@pytest.mark.postgresql
def test_a_waiter_resumes_on_the_other_replica_when_its_own_dies(
    balanced: tuple[TcpProxy, list[LiveServer]],
) -> None:
    balancer, servers = balanced
    url = f"http://127.0.0.1:{balancer.port}"
    with Gate(url, api_key=servers[0].tokens[AGENT]) as gate:
        request_id = gate.submit("db.export", resource="postgres://prod/customers", params={"rows": 10})["id"]
    outcome: dict[str, Any] = {}

    def waiter() -> None:
        with Gate(url, api_key=servers[0].tokens[AGENT]) as own:
            try:
                outcome["view"] = own.wait(request_id, timeout=90)
            except Exception as exc:  # handed to the assertion below
                outcome["error"] = exc

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 20
    while sum(balancer.active) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # until the waiter's stream is open through the balancer
    assert sum(balancer.active) == 1, balancer.active
    holder = balancer.active.index(1)
    connections_before = balancer.connections
    servers[holder].kill()  # the replica holding the stream is gone, without a goodbye
    survivor = servers[1 - holder]
    time.sleep(0.5)  # let the waiter notice (not a timing assert)
    with survivor.client(ALICE) as alice:
        assert alice.review(request_id, "approve", "ok")["status"] == "approved"
    thread.join(90)
    assert not thread.is_alive(), "the waiter never returned"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["view"]["status"] == "approved"
    assert balancer.connections > connections_before, "the waiter never reconnected"


class RefuseFirstStreams(httpx.BaseTransport):
    """The first stream connections are answered 503, as a load balancer answers while a replica goes away
    (or a replica whose database is unreachable does): the waiter must retry, not fail."""

    def __init__(self, refusals: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.refusals = refusals
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events") and self.refused < self.refusals:
            self.refused += 1
            body = b'{"error": {"code": "unavailable", "message": "no healthy upstream", "detail": {}}}'
            return httpx.Response(503, headers={"Retry-After": "1"}, content=body, request=request)
        return self.inner.handle_request(request)


def test_a_waiter_retries_a_stream_refused_503(live_servers: Any) -> None:
    server: LiveServer = live_servers()
    transport = RefuseFirstStreams(2)
    with Gate(server.url, api_key=server.tokens[AGENT], transport=transport, timeout=60) as gate:
        request_id = gate.submit("db.export", resource="postgres://prod/x", params={"rows": 1})["id"]
        outcome: dict[str, Any] = {}

        def waiter() -> None:
            try:
                outcome["view"] = gate.wait(request_id, timeout=60)
            except Exception as exc:  # handed to the assertion below
                outcome["error"] = exc

        thread = threading.Thread(target=waiter)
        thread.start()
        deadline = time.monotonic() + 20
        while transport.refused < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with server.client(ALICE) as alice:
            assert alice.review(request_id, "approve", "ok")["status"] == "approved"
        thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["view"]["status"] == "approved" and transport.refused == 2
