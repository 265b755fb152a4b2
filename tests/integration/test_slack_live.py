"""Slack end to end: a real `keyturn serve` (SQLite and PostgreSQL), the real slack_sdk client, a fake Slack
Web API on loopback that checks what it receives as Slack does, and interactivity signed as Slack signs it.

Policy (support/live.py + slack_live.py): `db.export` needs 1 from sre (rows editable, connection_string
redacted); `k8s.delete` needs 2 from sre and 1 from security; `iam.role.attach` needs 1 from sre, step-up.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from keyturn import Gate
from keyturn.channels.base import Delivery, DeliveryFailed, DeliveryKind
from keyturn.channels.slack import APPROVE, DENY
from keyturn.redact import KEYED_PREFIX, REDACTED_KEY
from keyturn.store import Store
from support.live import keyturn_executable
from support.slack_live import MALLORY, NEWBIE, PEOPLE, SlackWorld, Worlds

ALICE_U, SAM_U, OLIVIA_U = "U0ALICE", "U0SAM", "U0OLIVIA"
ALICE = PEOPLE[ALICE_U]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worlds]:
    with Worlds.opened(tmp_path_factory, "slack") as started:
        yield started


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def world(request: pytest.FixtureRequest, worlds: Worlds) -> SlackWorld:
    return worlds.get(request.param)


def buttons(message: dict[str, Any]) -> list[str]:
    return [e["action_id"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


def test_card_shows_the_redacted_request(world: SlackWorld) -> None:
    request = world.submit(
        params={"rows": 5000, "connection_string": "postgres://admin:hunter2@db/prod"},
        justification="quarterly report",
        on_behalf_of="user:olivia@example.com",
    )
    channel, ts = world.post_card(request["id"])
    assert channel == "C0OPS0001"
    card = world.fake.message(channel, ts)
    shown = str(card)
    for expected in (
        "agent:deploy-bot",
        "user:olivia@example.com",
        "db.export",
        "quarterly report",
        "1 from sre",
    ):
        assert expected in shown
    assert "hunter2" not in shown
    assert buttons(card) == [APPROVE, DENY]


def test_a_request_routed_to_slack_is_posted_by_the_outbox_approved_there_and_runs_once(
    world: SlackWorld,
) -> None:
    """The whole path, nothing posted by the test: the agent's guarded call submits and waits; the server's
    planner writes the outbox row with the submit and its dispatcher posts the card; a linked sre approves
    (with an edit) through the modal; the card shows who decided; the waiting call wakes and runs once with
    the approved params; the card follows the request to `succeeded`."""
    agent = world.server.tokens["agent:deploy-bot"]
    runs: list[tuple[str, int]] = []
    returned: list[str] = []
    with Gate(world.server.url, agent, timeout=60) as gate:

        @gate.guard("release.publish", resource=lambda service, **_: f"svc://{service}")
        def publish(service: str, percent: int, api_token: str) -> str:
            runs.append((service, percent))
            return f"{service} at {percent}%"

        waiting = threading.Thread(target=lambda: returned.append(publish("payments", 50, "tok-hunter2")))
        waiting.start()
        try:
            request_id = _pending_request(world, "release.publish")
            channel, ts, card = world.posted_card(request_id)
            assert channel == world.fake.channel_id("#ops-approvals")
            assert buttons(card) == [APPROVE, DENY]
            # The dispatcher renders with the server's keyed redactor: the card's digest is the API's.
            digest = world.view(request_id)["params"]["api_token"][REDACTED_KEY]
            assert digest.startswith(KEYED_PREFIX) and digest in str(card)
            assert "tok-hunter2" not in str(card)

            modal = world.open_modal(ALICE_U, APPROVE, request_id, channel, ts)
            answer = world.submit_modal(
                ALICE_U, modal, {"keyturn_param:params.percent": "10", "keyturn_comment": "canary first"}
            )
            assert answer.status_code == 200 and answer.content == b"", answer.text
            decided = world.wait_card(channel, ts, "approved by user:alice@example.com")
            assert buttons(decided) == []
        finally:
            waiting.join(60)
    assert not waiting.is_alive()
    assert runs == [("payments", 10)] and returned == ["payments at 10%"]
    world.wait_card(channel, ts, "succeeded (approved by user:alice@example.com)", timeout=30)
    assert world.view(request_id)["status"] == "succeeded"
    posted = [c for c in world.fake.ok_calls("chat.postMessage") if request_id in str(c.args)]
    assert len(posted) == 1  # one card, updated in place on every transition


def _pending_request(world: SlackWorld, action: str, timeout: float = 30.0) -> str:
    """The id of the pending request of `action` (the one the waiting agent submitted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = httpx.get(
            f"{world.server.url}/v1/actions",
            params={"status": "pending"},
            headers=world.server.headers("user:erin@example.com"),
        )
        listed.raise_for_status()
        found = [r["id"] for r in listed.json()["items"] if r["action"] == action]
        if found:
            return str(found[0])
        time.sleep(0.05)
    raise AssertionError(f"no pending {action} request within {timeout:g}s")


def test_linked_qualified_human_approves_with_an_edit(world: SlackWorld) -> None:
    request = world.submit(params={"rows": 5000}, justification="export")
    channel, ts = world.post_card(request["id"])
    modal = world.open_modal(ALICE_U, APPROVE, request["id"], channel, ts)
    rows = next(b for b in modal["blocks"] if b.get("block_id") == "keyturn_param:params.rows")
    assert rows["element"]["initial_value"] == "5000"
    answer = world.submit_modal(
        ALICE_U, modal, {"keyturn_param:params.rows": "100", "keyturn_comment": "smaller, please"}
    )
    assert answer.status_code == 200 and answer.content == b"", answer.text  # closes the modal
    decided = world.view(request["id"])
    assert decided["status"] == "approved"
    assert decided["approved_params"] == {"rows": 100}
    assert [(r["reviewer"], r["comment"], r["edited"]) for r in decided["reviews"]] == [
        (ALICE, "smaller, please", True)
    ]
    card = world.wait_card(channel, ts, "approved by user:alice@example.com")
    assert buttons(card) == []
    assert '"rows": 100' in str(card)


def test_deny_requires_a_reason(world: SlackWorld) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    modal = world.open_modal(ALICE_U, DENY, request["id"], channel, ts)
    refused = world.submit_modal(ALICE_U, modal, {"keyturn_comment": "   "})
    assert refused.json()["response_action"] == "errors"
    assert "reason" in refused.json()["errors"]["keyturn_comment"]
    assert world.view(request["id"])["status"] == "pending"
    assert world.submit_modal(ALICE_U, modal, {"keyturn_comment": "not this quarter"}).status_code == 200
    assert world.view(request["id"])["status"] == "denied"
    card = world.wait_card(channel, ts, "denied by user:alice@example.com: not this quarter")
    assert buttons(card) == []


def test_linking_needs_the_person_and_a_fresh_code(world: SlackWorld) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    code = world.link_code(MALLORY, request["id"], channel, ts)
    assert world.opened_modal(request["id"]) is None
    assert world.redeem("agent:deploy-bot", code).status_code == 403  # agents are never linked
    assert world.redeem("user:dana@example.com", "ktl_" + "x" * 24).status_code == 400
    linked = world.redeem("user:dana@example.com", code)
    assert linked.status_code == 200 and linked.json()["principal_id"] == "user:dana@example.com"
    assert world.redeem("user:dana@example.com", code).status_code == 400  # once only
    # dana (data-owners) is now linked but not qualified for db.export (sre): refused with the reason
    said = len(world.ephemerals_for(MALLORY))
    world.click(MALLORY, APPROVE, request["id"], channel, ts)
    assert "not in any group" in world.wait_ephemeral(MALLORY, said)
    assert world.view(request["id"])["reviews"] == []


def test_on_behalf_of_human_is_told_the_outcome_by_dm(world: SlackWorld) -> None:
    request = world.submit(on_behalf_of="user:olivia@example.com")
    channel, ts = world.post_card(request["id"])
    modal = world.open_modal(ALICE_U, APPROVE, request["id"], channel, ts)
    assert world.submit_modal(ALICE_U, modal, {}).status_code == 200
    view = world.view(request["id"])
    store = Store.open(world.database_url)
    try:
        delivery = Delivery("o1", DeliveryKind.OUTCOME, "slack:#ops-approvals", "request.approved", view)
        assert asyncio.run(world.channel(with_accounts=store).post(delivery)) is None
    finally:
        store.close()
    dm = world.fake.messages["D" + OLIVIA_U]
    assert any(
        request["id"] in str(m) or "approved by user:alice@example.com" in m["text"] for m in dm.values()
    )


def test_slack_outages_become_retryable_failures(world: SlackWorld) -> None:
    request = world.submit()
    delivery = Delivery(
        "x", DeliveryKind.POST, "slack:#ops-approvals", "request.pending", world.view(request["id"])
    )
    channel = world.channel()
    world.fake.fail_next(429, retry_after=7)
    with pytest.raises(DeliveryFailed) as limited:
        asyncio.run(channel.post(delivery))
    assert limited.value.retry_after == 7 and not limited.value.permanent
    world.fake.fail_next(503)
    with pytest.raises(DeliveryFailed) as down:
        asyncio.run(channel.post(delivery))
    assert not down.value.permanent
    assert asyncio.run(channel.post(delivery)) is not None  # back up: delivered
    bad = world.channel()
    bad.client.token = "xoxb-wrong"
    with pytest.raises(DeliveryFailed) as refused:
        asyncio.run(bad.post(delivery))
    assert refused.value.permanent and "invalid_auth" in str(refused.value)
    unknown = Delivery("y", DeliveryKind.POST, "slack:#nowhere", "request.pending", delivery.view)
    with pytest.raises(DeliveryFailed) as missing:
        asyncio.run(channel.post(unknown))
    assert missing.value.permanent and "channel_not_found" in str(missing.value)


def test_keyturn_chat_link_command(world: SlackWorld) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    code = world.link_code(NEWBIE, request["id"], channel, ts)
    env = {
        **os.environ,
        "KEYTURN_URL": world.server.url,
        "KEYTURN_TOKEN": world.server.tokens["user:dave@example.com"],
    }
    linked = subprocess.run(
        [keyturn_executable(), "chat", "link", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert linked.returncode == 0, linked.stderr
    assert f"linked slack account T0KEYTURN/{NEWBIE} to user:dave@example.com" in linked.stdout
    again = subprocess.run(
        [keyturn_executable(), "chat", "link", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "used already" in again.stderr
    listed = subprocess.run(
        [keyturn_executable(), "chat", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0 and NEWBIE in listed.stdout
    # dave (security) is not qualified for db.export: now the refusal says so instead of offering a code
    said = len(world.ephemerals_for(NEWBIE))
    world.click(NEWBIE, APPROVE, request["id"], channel, ts)
    assert "not in any group" in world.wait_ephemeral(NEWBIE, said)
