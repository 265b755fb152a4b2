"""The outbox under crashes and replicas, through real `keyturn serve` processes and a real receiver.

- `kill -9` of the server while deliveries are in flight: after a restart everything is delivered, and a
  delivery seen twice by the receiver carries the same `webhook-id` both times.
- Two replicas on one PostgreSQL, both dispatching: each delivery is made exactly once.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from keyturn.store import Store
from keyturn.store.outbox import Outbox
from support.channels import policy, webhook_settings
from support.webhook_receiver import Received, WebhookReceiver


def wait_all_done(database_url: str, count: int, timeout: float = 20.0) -> dict[str, int]:
    """The receiver logs a delivery before answering it; the server records it just after."""
    deadline = time.monotonic() + timeout
    with Store.open(database_url) as store:
        while True:
            statuses = Outbox(store).count_by_status()
            if statuses == {"done": count} or time.monotonic() > deadline:
                return statuses
            time.sleep(0.1)


def ids_by_event(got: list[Received]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in got:
        out[(r.json["data"]["id"], r.json["type"])].add(r.id)
    return out


@pytest.mark.timeout(240)
def test_kill_9_mid_delivery_then_restart_delivers_everything(
    live_servers: Any, database_url: str, tmp_path: Path
) -> None:
    stall = threading.Event()  # while set, the receiver holds its answers: deliveries are in flight

    def slow(_attempt: int) -> tuple[int, dict[str, str]]:
        if stall.is_set():
            time.sleep(3.0)
        return 200, {}

    receiver = WebhookReceiver(respond=slow).start()
    try:
        server = live_servers(
            database_url=database_url,
            policy=policy(),
            settings=webhook_settings(
                tmp_path / "cfg",
                {"siem": receiver, "oncall": receiver},
                delivery={"lease": 2, "timeout": 10},
            ),
            timeout=120,
        )
        agent = server.client("agent:deploy-bot")
        stall.set()
        ids = [agent.submit("db.export", f"postgres://prod/t{i}", {"rows": i})["id"] for i in range(20)]
        deadline = time.monotonic() + 20
        while len(receiver.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.received, "no delivery started before the kill"
        server.kill()  # deliveries in flight: their answers never reach the dead server
        stall.clear()
        server.start(timeout=120)
        # the receiver keeps answering until the restarted server has recorded every delivery
        assert wait_all_done(database_url, 20, timeout=60) == {"done": 20}
        got = receiver.accepted()
    finally:
        receiver.stop()
    assert len(got) > len(ids)  # deliveries in flight at the kill were made again after the restart
    by_event = ids_by_event(got)
    assert {rid for rid, _ in by_event} == set(ids)
    assert all(kind == "request.pending" for _, kind in by_event)
    # a delivery received twice (sent before the kill, sent again after) repeats its webhook-id
    assert all(len(webhook_ids) == 1 for webhook_ids in by_event.values()), by_event


@pytest.mark.timeout(240)
def test_two_replicas_on_postgresql_deliver_each_row_exactly_once(
    live_servers: Any, postgres_url: str, tmp_path: Path
) -> None:
    receiver = WebhookReceiver().start()
    try:
        server = live_servers(
            database_url=postgres_url,
            policy=policy(),
            settings=webhook_settings(tmp_path / "cfg", {"siem": receiver, "oncall": receiver}),
            timeout=120,
        )
        replica = server.start_replica(timeout=120)  # a loaded CI machine starts slowly
        agents = [server.client("agent:deploy-bot"), replica.client("agent:deploy-bot")]
        reviewers = [server.client("user:alice@example.com"), replica.client("user:bob@example.com")]

        def one(i: int) -> str:
            rid: str = agents[i % 2].submit("db.export", f"postgres://prod/t{i}", {"rows": i})["id"]
            if i % 2 == 0:
                reviewers[(i // 2) % 2].review(rid, "approve", "ok")
            return rid

        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(pool.map(one, range(80)))
        receiver.wait_for(lambda got: len(got) >= 120, timeout=60)
        assert wait_all_done(postgres_url, 120) == {"done": 120}
        time.sleep(1.0)  # a duplicate, if there were one, would arrive now
        got = receiver.accepted()
    finally:
        receiver.stop()
    assert len(got) == 120 == len({r.id for r in got})  # 80 pending + 40 approved, each once
    by_event = ids_by_event(got)
    assert len(by_event) == 120 and {rid for rid, _ in by_event} == set(ids)
    for i, rid in enumerate(ids):
        events = [r.json["type"] for r in got if r.json["data"]["id"] == rid]
        assert events == (["request.pending", "request.approved"] if i % 2 == 0 else ["request.pending"])
