"""Socket Mode (`channels.slack.app_token`): the server opens the WebSocket itself (slack_sdk's Socket Mode
client, via apps.connections.open on the fake Slack), and the same interactions arrive as envelopes: a
click opens the modal, a submission becomes a review through the same path, a refusal is the modal's
error, and a redelivered envelope is handled once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyturn.channels.slack import APPROVE, DENY
from support.fake_slack import click_payload, submission_payload
from support.slack_live import SlackWorld


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlackWorld]:
    started = SlackWorld.start(Path(tmp_path_factory.mktemp("slack-socket")), socket_mode=True)
    try:
        started.fake.wait_for(lambda fake: fake.socket.connected(), timeout=30)
        started.link_everyone()  # the link-code clicks still go over HTTP here; both paths are mounted
        yield started
    finally:
        started.stop()


def click(world: SlackWorld, user: str, action: str, request_id: str, channel: str, ts: str) -> dict:
    payload = click_payload(
        user=user,
        action_id=action,
        request_id=request_id,
        channel=channel,
        message_ts=ts,
        trigger_id=world.fake.new_trigger(),
    )
    return world.fake.socket.push(payload)


def test_the_server_connects_with_the_app_token(world: SlackWorld) -> None:
    opened = world.fake.ok_calls("apps.connections.open")
    assert opened, [c.answer for c in world.fake.calls_to("apps.connections.open")]


def test_approve_over_socket_mode(world: SlackWorld) -> None:
    request = world.submit(params={"rows": 5000})
    channel, ts = world.post_card(request["id"])
    before = len(world.fake.views)
    ack = click(world, "U0ALICE", APPROVE, request["id"], channel, ts)
    assert ack.get("payload") in (None, {})
    modal = world.opened_modal(request["id"], before)
    assert modal is not None
    answer = world.fake.socket.push(
        submission_payload(user="U0ALICE", view=modal, values={"keyturn_param:params.rows": "10"})
    )
    assert answer.get("payload") in (None, {})
    view = world.view(request["id"])
    assert view["status"] == "approved" and view["approved_params"] == {"rows": 10}
    world.wait_card(channel, ts, "approved by user:alice@example.com")


def test_refusal_and_redelivery_over_socket_mode(world: SlackWorld) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    before = len(world.fake.views)
    click(world, "U0ALICE", DENY, request["id"], channel, ts)
    modal = world.opened_modal(request["id"], before)
    assert modal is not None
    refused = world.fake.socket.push(
        submission_payload(user="U0ALICE", view=modal, values={"keyturn_comment": ""})
    )
    assert refused["payload"]["response_action"] == "errors"
    assert world.view(request["id"])["status"] == "pending"
    carol = world.fake.socket.push(
        submission_payload(user="U0CAROL", view=modal, values={"keyturn_comment": "no"}),
        envelope_id="env-carol",
    )
    assert "not in any group" in carol["payload"]["errors"]["keyturn_comment"]
    sam = submission_payload(user="U0SAM", view=modal, values={"keyturn_comment": "no"})
    assert world.fake.socket.push(sam, envelope_id="env-sam").get("payload") in (None, {})
    # Slack redelivers an envelope it thinks was lost: handled once (the request is already denied anyway,
    # so the answer would be an error if it were handled again)
    again = world.fake.socket.push(sam, envelope_id="env-sam")
    assert again.get("payload") in (None, {})
    view = world.view(request["id"])
    assert view["status"] == "denied" and [r["reviewer"] for r in view["reviews"]] == ["user:sam@example.com"]
