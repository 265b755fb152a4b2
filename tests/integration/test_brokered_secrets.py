"""Brokered secrets: handed over only in the consume answer of an approved grant, and a secret the server
cannot resolve leaves the grant unused instead of stranding the request in `executing`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

POLICY = """\
version: 1
defaults: {decision: review, approvers: [security], ttl: 1h}
rules:
  - name: deploys carry the token
    match: {action: deploy.run}
    decision: allow
    secrets: [DEPLOY_TOKEN]
  - name: migrations need a secret nobody configured
    match: {action: db.migrate}
    decision: allow
    secrets: [MISSING_SECRET]
"""


@pytest.fixture
def server(live_servers: Any, tmp_path: Any) -> Any:
    secret_file = tmp_path / "deploy-token"
    secret_file.write_text("s3cr3t-deploy-value\n")
    return live_servers(
        policy=POLICY,
        settings={
            "secrets": {"DEPLOY_TOKEN": {"file": str(secret_file)}, "MISSING_SECRET": {"env": "KT_NOPE"}}
        },
    )


def test_secret_is_handed_over_with_the_grant_and_nowhere_else(server: Any) -> None:
    with server.client("agent:deploy-bot") as agent:
        submitted = agent.submit("deploy.run", "staging/api", {"version": "1.2"})
        assert submitted["status"] == "allowed"
        assert "s3cr3t" not in str(submitted)
        consumed = agent.consume(submitted["grant"])
        assert consumed["secrets"] == {"DEPLOY_TOKEN": "s3cr3t-deploy-value"}
        shown = agent.get(submitted["id"])
    assert "s3cr3t" not in str(shown)
    assert "s3cr3t" not in server.log()


def test_unresolvable_secret_leaves_the_grant_unconsumed(server: Any) -> None:
    with server.client("agent:deploy-bot") as agent:
        submitted = agent.submit("db.migrate", "postgres://prod/app", {})
        assert submitted["status"] == "allowed"
        answer = httpx.post(
            f"{server.url}/v1/grants/consume",
            json={"grant": submitted["grant"]},
            headers=server.headers("agent:deploy-bot"),
        )
        assert answer.status_code == 503
        assert "MISSING_SECRET" in answer.json()["error"]["message"]
        after = agent.get(submitted["id"])
    # Nothing ran and nothing can be stuck half-way: the request is still runnable, its grant unused.
    assert after["status"] == "allowed"
    assert after.get("grant")


def test_a_secret_echoed_into_the_result_never_reaches_the_ledger(server: Any) -> None:
    with server.client("agent:deploy-bot") as agent, server.client("user:erin@example.com") as auditor:
        submitted = agent.submit("deploy.run", "staging/api", {"version": "1.3"})
        agent.consume(submitted["grant"])
        agent.result(submitted["id"], "failed", detail="curl -H 'token: s3cr3t-deploy-value' refused")
        seen = auditor.get(submitted["id"])
    assert "s3cr3t" not in str(seen)
    assert seen["result"]["detail"] == "curl -H 'token: [secret DEPLOY_TOKEN]' refused"


def test_the_server_says_at_start_which_secrets_have_no_value(server: Any) -> None:
    log = server.log()
    assert "MISSING_SECRET" in log and "configured but has no value" in log
    assert "DEPLOY_TOKEN" not in log  # it has a value: nothing to say, and never the value itself
