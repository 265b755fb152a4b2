"""Every policy evaluation is recorded: the submit's, and the re-evaluation of every reviewer edit
(accepted or refused); a dry run (`/v1/evaluate`) records nothing."""

from __future__ import annotations

from typing import Any

import httpx

from keyturn.store import Store

ALICE = "user:alice@example.com"
AGENT = "agent:deploy-bot"


def decisions(server: Any, request_id: str | None = None) -> list[Any]:
    store = Store.open(server.database_url)
    try:
        return store.decisions(request_id=request_id, limit=1000)
    finally:
        store.close()


def test_edits_are_evaluated_again_and_recorded(live_server: Any) -> None:
    with live_server.client(AGENT) as agent:
        submitted = agent.submit("db.export", "postgres://prod/customers", {"rows": 5000})
    request_id = submitted["id"]
    assert [d.decision for d in decisions(live_server, request_id)] == ["review"]

    refused = httpx.post(
        f"{live_server.url}/v1/actions/{request_id}/reviews",
        json={"decision": "approve", "params": {"rows": 2_000_000}},
        headers=live_server.headers(ALICE),
    )
    assert refused.status_code == 422, refused.text
    recorded = decisions(live_server, request_id)
    assert [d.decision for d in recorded] == ["review", "deny"]
    assert "huge exports are refused" in recorded[1].rules

    with live_server.client(ALICE) as alice:
        approved = alice.review(request_id, "approve", "narrowed", {"rows": 500})
    assert approved["status"] == "approved"
    recorded = decisions(live_server, request_id)
    assert [d.decision for d in recorded] == ["review", "deny", "review"]
    assert len({d.request_digest for d in recorded}) == 3  # three different requests were evaluated


def test_a_dry_run_records_nothing(live_server: Any) -> None:
    before = len(decisions(live_server))
    answer = httpx.post(
        f"{live_server.url}/v1/evaluate",
        json={"action": "db.export", "params": {"rows": 10}},
        headers=live_server.headers(AGENT),
    )
    assert answer.status_code == 200 and answer.json()["decision"] == "review"
    assert len(decisions(live_server)) == before
