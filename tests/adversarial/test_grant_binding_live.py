"""A stolen grant is refused and the attempt is ledgered (issue #13 §4), through a real server, on SQLite
and PostgreSQL. Before the fix, any agent holding another's grant consumed it (200)."""

from __future__ import annotations

from typing import Any

import httpx

from support.live import DEFAULT_POLICY

POLICY = (
    DEFAULT_POLICY
    + """\
  - name: the runner executes deploys
    match: {action: deploy.run}
    decision: allow
    executors: [agent:exec-bot]
"""
)


def ledger(client: httpx.Client, server: Any, request_id: str) -> list[dict[str, Any]]:
    answer = client.get(
        "/v1/ledger/events",
        params={"request_id": request_id},
        headers=server.headers("user:erin@example.com"),
    )
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = answer.json()["items"]
    return events


def test_a_grant_binds_its_holder(live_servers: Any, database_url: str) -> None:
    server = live_servers(database_url=database_url, policy=POLICY)
    requester = server.headers("agent:deploy-bot")
    thief = server.headers("agent:exec-bot")  # a valid agent, same group (bots), not the holder
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        created = client.post(
            "/v1/actions", json={"action": "test.allow", "resource": "r"}, headers=requester
        )
        assert created.status_code == 201 and created.json()["status"] == "allowed", created.text
        grant = created.json()["grant"]
        stolen = client.post("/v1/grants/consume", json={"grant": grant}, headers=thief)
        assert stolen.status_code == 403, stolen.text
        assert stolen.json()["error"]["code"] == "grant_not_holder"
        refused = [e for e in ledger(client, server, created.json()["id"]) if e["type"] == "grant.refused"]
        assert len(refused) == 1 and refused[0]["actor"] == "agent:exec-bot"
        assert refused[0]["payload"]["bound_to"] == ["agent:deploy-bot"]
        # the refusal changed nothing: the holder still runs it, once
        mine = client.post("/v1/grants/consume", json={"grant": grant}, headers=requester)
        assert mine.status_code == 200, mine.text
        assert client.post("/v1/grants/consume", json={"grant": grant}, headers=requester).status_code == 409

        # A policy may name the executor instead: the requester then cannot run it itself.
        created = client.post(
            "/v1/actions", json={"action": "deploy.run", "resource": "r"}, headers=requester
        )
        grant = created.json()["grant"]
        own = client.post("/v1/grants/consume", json={"grant": grant}, headers=requester)
        assert own.status_code == 403 and own.json()["error"]["code"] == "grant_not_holder", own.text
        runner = client.post("/v1/grants/consume", json={"grant": grant}, headers=thief)
        assert runner.status_code == 200, runner.text
        assert runner.json()["status"] == "executing"
        types = [e["type"] for e in ledger(client, server, created.json()["id"])]
        assert types.count("grant.refused") == 1 and types[-1] == "grant.consumed"
