"""Webhooks through a real `keyturn serve` to a real receiver that verifies with someone else's verifier.

The receiver checks `v1` with the `standardwebhooks` library and `v1a` with the Ed25519 public key; the
events arrive in the order of the request's transitions, with a thin, redacted payload.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyturn.store import Store
from keyturn.store.outbox import Outbox
from support.channels import policy, webhook_settings
from support.webhook_receiver import WebhookReceiver, new_ed25519_pem

SECRET_DSN = "postgres://admin:hunter2-s3cr3t@db.internal/prod"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    pem, public = new_ed25519_pem()
    started = WebhookReceiver(public_key=public).start()
    started.pem = pem  # type: ignore[attr-defined]
    try:
        yield started
    finally:
        started.stop()


def test_a_request_routed_to_a_webhook_is_delivered_signed_and_redacted(
    live_servers: Any, database_url: str, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    server = live_servers(
        database_url=database_url,
        policy=policy(),
        settings=webhook_settings(
            tmp_path / "cfg", {"siem": receiver, "oncall": receiver}, ed25519_pem=receiver.pem
        ),  # type: ignore[attr-defined]
    )
    agent = server.client("agent:deploy-bot")
    submitted = agent.submit(
        "db.export",
        "postgres://prod/customers",
        {"rows": 5000, "connection_string": SECRET_DSN},
        justification="quarterly report",
    )
    assert submitted["status"] == "pending"
    got = receiver.wait_for(lambda got: len(got) >= 1)
    first = got[0]
    assert first.v1_ok and first.v1a_ok, first.signature
    assert first.signature.startswith("v1,") and " v1a," in first.signature
    event = first.json
    assert event["type"] == "request.pending"
    data = event["data"]
    assert data["id"] == submitted["id"] and data["status"] == "pending" and data["action"] == "db.export"
    assert data["still_needed"] == ["1 from sre"]
    assert data["api_url"] == f"{server.url}/v1/actions/{submitted['id']}"
    assert data["review_url"].endswith(submitted["id"])
    assert "hunter2" not in first.body.decode() and "params" not in data  # thin and redacted

    server.client("user:alice@example.com").review(submitted["id"], "approve", "ok")
    got = receiver.wait_for(lambda got: len(got) >= 2)
    assert [g.json["type"] for g in got] == ["request.pending", "request.approved"]
    assert got[1].json["data"]["status"] == "approved" and got[1].v1_ok and got[1].v1a_ok
    assert len({g.id for g in got}) == 2  # one id per delivery

    # a request that notifies no one writes no row; the delivered ones are recorded as done
    agent.submit("quiet.thing", "x")
    with Store.open(database_url) as store:
        rows = Outbox(store).list_rows()
    assert sorted((r.event_type, r.status) for r in rows) == [
        ("request.approved", "done"),
        ("request.pending", "done"),
    ]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'keyturn_channel_deliveries_total{channel="webhook",outcome="delivered"} 2.0' in metrics
    assert "keyturn_outbox_due_rows" in metrics and "keyturn_outbox_oldest_due_age_seconds" in metrics


def test_a_policy_naming_an_undefined_target_does_not_start(live_servers: Any, tmp_path: Path) -> None:
    bad = policy().replace('"webhook:siem"', '"webhook:nowhere"')
    with pytest.raises(RuntimeError) as failed:
        live_servers(policy=bad, settings=webhook_settings(tmp_path / "cfg", {}), timeout=60)
    assert "webhook:nowhere" in str(failed.value) and "policy.yaml:" in str(failed.value)
