"""Microsoft Teams through a real `keyturn serve`.

The card is posted to a fake Bot Connector by the real Teams SDK client, a mapped, qualified human clicks
Approve (an invoke signed like the Bot Framework's), the request is approved through the one review path, and
the card is updated for everyone."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyturn.channels.base import Delivery, DeliveryFailed, DeliveryKind, MessageRef
from keyturn.channels.teams import TeamsChannel
from keyturn.config import TeamsSettings
from support.fake_teams import (
    ALICE_OID,
    APP_ID,
    SECRET,
    SECRET_ENV,
    TEAMS_POLICY,
    TEAMS_USERS,
    TENANT_ID,
    FakeTeams,
    teams_environment,
)
from support.live import DEFAULT_AGENTS, LiveServer, start_server

ENDPOINT = "/v1/channels/teams/messages"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTeams]:
    fake = FakeTeams.start(tmp_path, app_id=APP_ID, tenant_id=TENANT_ID, secret=SECRET)
    teams_environment(fake, monkeypatch)
    try:
        yield fake
    finally:
        fake.stop()


def start_teams_server(tmp_path: Path, fake: FakeTeams, database_url: str | None = None) -> LiveServer:
    return start_server(
        tmp_path / "server",
        database_url=database_url,
        policy=TEAMS_POLICY,
        users=TEAMS_USERS,
        agents=DEFAULT_AGENTS,
        settings={"channels": {"teams": fake.teams_settings(secret_env=SECRET_ENV)}},
        timeout=120,  # a loaded CI machine imports the Teams SDK slowly
    )


def channel(fake: FakeTeams) -> TeamsChannel:
    return TeamsChannel(TeamsSettings.model_validate(fake.teams_settings(secret_env=SECRET_ENV)))


def post_card(fake: FakeTeams, server: LiveServer, request_id: str, timeout: float = 60.0) -> MessageRef:
    """The card the server's own outbox posted for the request (the policy notifies `teams:oncall`):
    submit → outbox row in the same transaction → dispatcher → Bot Connector, end to end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sent in list(fake.posted):
            if request_id in json.dumps(sent.activity):
                return MessageRef(
                    target="teams:oncall", conversation=sent.conversation_id, message_id=sent.activity_id
                )
        time.sleep(0.1)
    raise AssertionError(f"the outbox posted no card for {request_id} within {timeout:g}s")


def click(server: LiveServer, activity: dict[str, Any], token: str) -> httpx.Response:
    return httpx.post(
        server.url + ENDPOINT, json=activity, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_card_posted_approved_in_teams_and_updated(tmp_path: Path, fake: FakeTeams) -> None:
    server = start_teams_server(tmp_path, fake)
    try:
        agent = server.client("agent:deploy-bot")
        submitted = agent.submit(
            "db.export",
            "postgres://prod/customers",
            {"rows": 10, "connection_string": "postgres://admin:hunter2@db/prod"},
            justification="monthly report",
        )
        assert submitted["status"] == "pending"
        ref = post_card(fake, server, submitted["id"])

        # What the Bot Connector received: an Adaptive Card 1.5 with Approve / Deny, redacted params.
        assert len(fake.posted) == 1 and fake.refused == []
        card = fake.posted[0].card
        assert card["version"] == "1.5"
        verbs = {a.get("verb") for a in card["actions"] if a["type"] == "Action.Execute"}
        assert verbs == {"approve"}
        deny = next(a for a in card["actions"] if a["type"] == "Action.ShowCard")
        reason = deny["card"]["body"][0]
        assert reason["type"] == "Input.Text" and reason["isRequired"] is True
        assert deny["card"]["actions"][0]["verb"] == "deny"
        assert card["refresh"]["action"]["verb"] == "refresh"
        assert "hunter2" not in str(card)

        activity = fake.invoke(
            "approve",
            submitted["id"],
            oid=ALICE_OID,
            reply_to_id=ref.message_id,
            inputs={"comment": "looks fine"},
        )
        answer = click(server, activity, fake.inbound_token())
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["statusCode"] == 200 and body["type"] == "application/vnd.microsoft.card.adaptive"
        assert "actions" not in body["value"]  # decided: no buttons

        record = server.client("user:alice@example.com").get(submitted["id"])
        assert record["status"] == "approved"
        assert [(r["reviewer"], r["comment"]) for r in record["reviews"]] == [
            ("user:alice@example.com", "looks fine")
        ]
        # The message everyone sees was updated: the outcome, who decided, no buttons.
        # (by the click's own answer and by the outbox's update row, both to the one posted message)
        assert {u.activity_id for u in fake.updates} == {ref.message_id}
        updated = fake.updates[-1].card
        assert "actions" not in updated
        text = str(updated)
        assert "Approved" in text and "user:alice@example.com" in text
        # The agent's grant works: the approval was a real one.
        assert agent.wait(submitted["id"], timeout=5)["status"] == "approved"
    finally:
        server.stop()


def test_refresh_shows_a_decision_made_elsewhere(tmp_path: Path, fake: FakeTeams) -> None:
    server = start_teams_server(tmp_path, fake)
    try:
        submitted = server.client("agent:deploy-bot").submit("db.export", "postgres://prod/x", {"rows": 1})
        ref = post_card(fake, server, submitted["id"])
        server.client("user:bob@example.com").review(submitted["id"], "deny", "not today")
        refresh = fake.invoke("refresh", submitted["id"], oid=ALICE_OID, reply_to_id=ref.message_id)
        answer = click(server, refresh, fake.inbound_token())
        assert answer.status_code == 200
        card = answer.json()["value"]
        assert "Denied" in str(card) and "not today" in str(card) and "actions" not in card
    finally:
        server.stop()


def test_connector_throttling_and_bad_secret_are_delivery_failures(
    fake: FakeTeams, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = {
        "id": "req_x",
        "status": "pending",
        "action": "db.export",
        "resource": "r",
        "params": {},
        "requester": {"id": "agent:a", "kind": "agent"},
        "verdict": {"tier": None, "step_up": False},
        "still_needed": ["1 from sre"],
        "reviews": [],
        "review_url": "http://127.0.0.1:1/v1/actions/req_x",
    }
    delivery = Delivery(id="d1", kind=DeliveryKind.POST, target="teams:oncall", event_type="e", view=view)

    async def post(teams: TeamsChannel) -> MessageRef | None:
        try:
            return await teams.post(delivery)
        finally:
            await teams.aclose()

    fake.fail_next.append((429, {"Retry-After": "7"}))
    with pytest.raises(DeliveryFailed) as throttled:
        asyncio.run(post(channel(fake)))
    assert throttled.value.retry_after == 7 and not throttled.value.permanent

    unknown = Delivery(id="d2", kind=DeliveryKind.POST, target="teams:nowhere", event_type="e", view=view)
    with pytest.raises(DeliveryFailed) as nowhere:
        asyncio.run(channel(fake).post(unknown))
    assert nowhere.value.permanent and "teams:nowhere" in str(nowhere.value)

    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    with pytest.raises(DeliveryFailed) as refused:
        asyncio.run(post(channel(fake)))
    assert refused.value.permanent and "invalid_client" in str(refused.value)
    assert fake.posted == []


def test_server_refuses_to_start_without_the_bot_secret(tmp_path: Path, fake: FakeTeams) -> None:
    import subprocess

    import yaml

    from support.live import keyturn_executable

    settings = fake.teams_settings(secret_env="KT_TEST_TEAMS_UNSET")
    (tmp_path / "policy.yaml").write_text(TEAMS_POLICY)
    config = tmp_path / "keyturn.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "policy": ["policy.yaml"],
                "database": "sqlite:///k.db",
                "data_dir": "data",
                "channels": {"teams": settings},
            }
        )
    )
    result = subprocess.run(
        [keyturn_executable(), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "channels.teams.app_secret" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr

    del settings["tenant_id"]
    config.write_text(yaml.safe_dump({"policy": ["policy.yaml"], "channels": {"teams": settings}}))
    result = subprocess.run(
        [keyturn_executable(), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "channels.teams.tenant_id" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_bot_added_to_a_channel_logs_where_it_is(tmp_path: Path, fake: FakeTeams) -> None:
    """The admin learns the conversation id and service URL to configure from keyturn's log."""
    server = start_teams_server(tmp_path, fake)
    try:
        update = {
            "type": "conversationUpdate",
            "id": "f:added",
            "serviceUrl": fake.service_url,
            "channelId": "msteams",
            "from": {"id": "29:admin"},
            "recipient": {"id": f"28:{APP_ID}"},
            "conversation": {"id": "19:new-channel@thread.tacv2;messageid=1", "tenantId": TENANT_ID},
            "membersAdded": [{"id": f"28:{APP_ID}"}],
        }
        forged = {**update, "conversation": {"id": "19:forged@thread.tacv2", "tenantId": TENANT_ID}}
        assert click(server, forged, fake.inbound_token(audience="someone-else")).status_code == 401
        assert click(server, update, fake.inbound_token()).status_code == 200
        log = server.log()
        assert "19:new-channel@thread.tacv2" in log and fake.service_url in log
        assert "messageid" not in log and "19:forged" not in log
    finally:
        server.stop()
