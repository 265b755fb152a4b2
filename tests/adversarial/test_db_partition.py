"""A 40 s network partition between a real `keyturn serve` and PostgreSQL (issue #13 §5).

The server reaches PostgreSQL through a loopback TCP proxy (tests/support/tcp_proxy.py) that, on
`partition()`, keeps accepting connections but passes no byte either way. Throughout: every API call is
answered 503 with Retry-After, within a bound (never a 500, never a hang), `/healthz` answers, `/readyz`
says not ready; after `heal()` everything works again without a restart.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from conftest import fresh_postgres_schema
from support.live import start_server
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgresql

AGENT = "agent:deploy-bot"
ALICE = "user:alice@example.com"
PARTITION_SECONDS = 40.0
# Longer than any answer may take (the engine's bounds add up to about 20 s): a call still open after
# this is a hang, and fails the test as one.
HANG = 45.0


def test_a_partition_gives_bounded_503s_liveness_throughout_and_heals(tmp_path: Path) -> None:
    with fresh_postgres_schema() as url, TcpProxy([("127.0.0.1", 5432)]) as proxy:
        proxied = make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        server = start_server(tmp_path, database_url=proxied, settings={"timer_interval": 0.5}, timeout=120)
        try:
            with server.client(AGENT) as agent:
                request_id = agent.submit("db.export", "postgres://prod/customers", {"rows": 1})["id"]
            outcome = _during_partition(server.url, server.tokens, request_id, proxy)
            proxy.heal()
            _wait_until_working(server.url, server.tokens)
        finally:
            server.stop()
            log = server.log()
    statuses: Counter[int] = outcome["statuses"]
    assert statuses, "no call finished during the partition"
    assert set(statuses) == {503}, f"answers during the partition: {dict(statuses)}\n{log[-3000:]}"
    assert outcome["hangs"] == [], f"calls that never answered: {outcome['hangs']}"
    assert outcome["without_retry_after"] == 0
    assert outcome["codes"] <= {"unavailable"}, outcome["codes"]
    assert outcome["liveness_failures"] == [], outcome["liveness_failures"]
    assert outcome["liveness_answers"] > 10
    assert 503 in outcome["readiness"], f"/readyz never said not ready: {outcome['readiness']}"
    assert "unhandled error" not in log, log[-3000:]


def _during_partition(url: str, tokens: dict[str, str], request_id: str, proxy: TcpProxy) -> dict[str, Any]:
    outcome: dict[str, Any] = {
        "statuses": Counter(),
        "hangs": [],
        "without_retry_after": 0,
        "codes": set(),
        "liveness_failures": [],
        "liveness_answers": 0,
        "readiness": Counter(),
    }
    lock = threading.Lock()
    stop = threading.Event()
    agent = {"Authorization": f"Bearer {tokens[AGENT]}"}
    alice = {"Authorization": f"Bearer {tokens[ALICE]}"}
    calls = [
        ("POST", "/v1/actions", agent, {"action": "db.export", "resource": "r", "params": {"rows": 2}}),
        ("GET", f"/v1/actions/{request_id}", alice, None),
        ("GET", "/v1/actions?status=pending", alice, None),
        ("POST", f"/v1/actions/{request_id}/reviews", alice, {"decision": "approve"}),
    ]

    def caller(method: str, path: str, headers: dict[str, str], body: Any) -> None:
        while not stop.is_set():
            try:
                response = httpx.request(method, url + path, headers=headers, json=body, timeout=HANG)
            except httpx.TimeoutException:
                with lock:
                    outcome["hangs"].append(f"{method} {path}")
                continue
            with lock:
                outcome["statuses"][response.status_code] += 1
                if response.status_code == 503:
                    outcome["codes"].add(response.json()["error"]["code"])
                    outcome["without_retry_after"] += "retry-after" not in response.headers

    def liveness() -> None:
        while not stop.is_set():
            try:
                response = httpx.get(url + "/healthz", timeout=5.0)
                ok = response.status_code == 200
            except httpx.HTTPError as exc:
                ok, response = False, exc  # type: ignore[assignment]
            with lock:
                if ok:
                    outcome["liveness_answers"] += 1
                else:
                    outcome["liveness_failures"].append(repr(response))
            try:
                ready = httpx.get(url + "/readyz", timeout=5.0).status_code
            except httpx.HTTPError:
                ready = -1
            with lock:
                outcome["readiness"][ready] += 1
            stop.wait(0.5)

    proxy.partition()
    threads = [threading.Thread(target=caller, args=call) for call in calls]
    threads.append(threading.Thread(target=liveness))
    for thread in threads:
        thread.start()
    stop.wait(PARTITION_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(HANG + 5)
    return outcome


def _wait_until_working(url: str, tokens: dict[str, str]) -> None:
    """After the partition heals, a submit succeeds and /readyz says ready again, without a restart."""
    deadline = time.monotonic() + 60
    headers = {"Authorization": f"Bearer {tokens[AGENT]}"}
    body = {"action": "test.allow", "resource": "svc://after", "params": {}}
    submitted = ready = False
    while time.monotonic() < deadline and not (submitted and ready):
        submitted = (
            submitted
            or httpx.post(url + "/v1/actions", headers=headers, json=body, timeout=HANG).status_code == 201
        )
        ready = ready or httpx.get(url + "/readyz", timeout=5.0).status_code == 200
        time.sleep(0.5)
    assert submitted, "submits still fail after the partition healed"
    assert ready, "/readyz still says not ready after the partition healed"
