"""Attacks on the Slack surface, through a real `keyturn serve` (SQLite and PostgreSQL) and the fake Slack.

Signatures: forged, stale and replayed interactivity requests are refused before anything is parsed or done.
People: an unlinked Slack user, a linked user outside the route's groups, the requester, the on-behalf-of
human and an agent clicking Approve are refused with a reason and the request is unchanged — both for the
click (ephemeral message, no modal) and for a forged modal submission that skips the click. A click on a
request decided elsewhere shows the real outcome; a step-up route cannot be approved from chat; the same
person approving twice counts once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from keyturn.channels.slack import APPROVE, APPROVE_VIEW, OPEN_CONSOLE
from support.fake_slack import click_payload, form_body, signed_headers, submission_payload
from support.slack_live import BOT, MALLORY, NEWBIE, PEOPLE, SECRET, SlackWorld, Worlds

ALICE_U, BOB_U, SAM_U, CAROL_U, OLIVIA_U = "U0ALICE", "U0BOB", "U0SAM", "U0CAROL", "U0OLIVIA"


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worlds]:
    with Worlds.opened(tmp_path_factory, "slack-attacks") as started:
        yield started


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def world(request: pytest.FixtureRequest, worlds: Worlds) -> SlackWorld:
    return worlds.get(request.param)


def unchanged(world: SlackWorld, request_id: str) -> None:
    view = world.view(request_id)
    assert view["status"] == "pending" and view["reviews"] == [], view


def a_modal(world: SlackWorld, request_id: str, channel: str, ts: str) -> dict[str, Any]:
    """What an attacker submits without having been offered a modal: a well-formed approve view."""
    return {
        "id": "V0FORGED",
        "callback_id": APPROVE_VIEW,
        "private_metadata": f'{{"r": "{request_id}", "c": "{channel}", "t": "{ts}"}}',
        "blocks": [
            {
                "type": "input",
                "block_id": "keyturn_comment",
                "element": {"type": "plain_text_input", "action_id": "comment"},
            }
        ],
    }


def click_body(world: SlackWorld, request_id: str, channel: str, ts: str, user: str = ALICE_U) -> bytes:
    return form_body(
        click_payload(
            user=user,
            action_id=APPROVE,
            request_id=request_id,
            channel=channel,
            message_ts=ts,
            trigger_id=world.fake.new_trigger(),
        )
    )


# --- signatures ----------------------------------------------------------------------------------------


def test_forged_signatures_are_refused(world: SlackWorld) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    views = len(world.fake.views)
    body = click_body(world, request["id"], channel, ts)
    forged = [
        signed_headers("not-the-signing-secret", body),  # wrong secret
        {**signed_headers(SECRET, body), "X-Slack-Signature": "v0=" + "0" * 64},  # made-up signature
        {k: v for k, v in signed_headers(SECRET, body).items() if k != "X-Slack-Signature"},  # none at all
        {**signed_headers(SECRET, body), "X-Slack-Request-Timestamp": "soon"},  # not a timestamp
        signed_headers(SECRET, body.replace(b"U0ALICE", b"U0SAM0")),  # signature of another body
    ]
    for headers in forged:
        answer = world.send_raw(body, headers)
        assert answer.status_code == 401, answer.text
    # a submission with a bad signature does nothing either
    modal = a_modal(world, request["id"], channel, ts)
    answer = world.send(submission_payload(user=ALICE_U, view=modal, values={}), secret="guess")
    assert answer.status_code == 401
    assert len(world.fake.views) == views
    unchanged(world, request["id"])


def test_stale_signatures_are_refused(world: SlackWorld) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    views = len(world.fake.views)
    modal = a_modal(world, request["id"], channel, ts)
    six_minutes_ago = int(time.time()) - 6 * 60
    answer = world.send(
        submission_payload(user=ALICE_U, view=modal, values={}), timestamp=six_minutes_ago
    )  # correctly signed, but outside the 5-minute window
    assert answer.status_code == 401
    in_the_future = int(time.time()) + 6 * 60
    body = click_body(world, request["id"], channel, ts)
    assert world.send_raw(body, signed_headers(SECRET, body, in_the_future)).status_code == 401
    assert len(world.fake.views) == views
    unchanged(world, request["id"])


def test_replayed_signatures_are_refused(world: SlackWorld) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    body = click_body(world, request["id"], channel, ts)
    headers = signed_headers(SECRET, body)
    views = len(world.fake.views)
    assert world.send_raw(body, headers).status_code == 200
    assert len(world.fake.views) == views + 1  # the genuine click opened one modal
    replay = world.send_raw(body, headers)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "replayed"
    assert len(world.fake.views) == views + 1
    # a replayed approval submission: the first one counts, its replay is refused outright
    submission = form_body(submission_payload(user=ALICE_U, view=world.fake.views[-1], values={}))
    signed = signed_headers(SECRET, submission)
    assert world.send_raw(submission, signed).status_code == 200
    assert world.send_raw(submission, signed).status_code == 401
    assert len(world.view(request["id"])["reviews"]) == 1


# --- people who must not count ------------------------------------------------------------------------


def refused_click(world: SlackWorld, user: str, request_id: str, channel: str, ts: str) -> str:
    said = len(world.ephemerals_for(user))
    views = len(world.fake.views)
    assert world.click(user, APPROVE, request_id, channel, ts).status_code == 200
    message = world.wait_ephemeral(user, said)
    assert world.opened_modal(request_id, views) is None
    return message


def refused_submission(world: SlackWorld, user: str, request_id: str, channel: str, ts: str) -> str:
    answer = world.submit_modal(user, a_modal(world, request_id, channel, ts), {"keyturn_comment": "ok"})
    assert answer.status_code == 200 and answer.json()["response_action"] == "errors", answer.text
    message: str = answer.json()["errors"]["keyturn_comment"]
    return message


def test_unlinked_slack_user_is_refused(world: SlackWorld) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    message = refused_click(world, NEWBIE, request["id"], channel, ts)
    assert "not linked" in message and "keyturn chat link ktl_" in message
    assert "not linked" in refused_submission(world, NEWBIE, request["id"], channel, ts)
    unchanged(world, request["id"])


def test_linked_user_outside_the_routes_groups_is_refused(world: SlackWorld) -> None:
    request = world.submit()  # db.export: 1 from sre; carol is security only
    channel, ts = world.post_card(request["id"])
    assert "not in any group" in refused_click(world, CAROL_U, request["id"], channel, ts)
    assert "not in any group" in refused_submission(world, CAROL_U, request["id"], channel, ts)
    unchanged(world, request["id"])


def test_linked_user_unknown_to_the_identity_source_is_refused(world: SlackWorld) -> None:
    # MALLORY redeemed no code here; link U0MALLORY straight to an id the users file does not have
    from datetime import UTC, datetime

    from keyturn.store import Store
    from keyturn.store.chat import ChatAccounts, ChatLink
    from support.fake_slack import TEAM

    store = Store.open(world.database_url)
    try:
        ChatAccounts(store).save_link(
            ChatLink("slack", TEAM, MALLORY, "user:ghost@example.com", "code", datetime.now(UTC))
        )
    finally:
        store.close()
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    assert "does not list" in refused_click(world, MALLORY, request["id"], channel, ts)
    unchanged(world, request["id"])


def test_requester_is_refused(world: SlackWorld) -> None:
    request = world.submit(who=PEOPLE[BOB_U])  # bob (sre) submits himself
    channel, ts = world.post_card(request["id"])
    assert "cannot review" in refused_click(world, BOB_U, request["id"], channel, ts)
    assert "cannot review" in refused_submission(world, BOB_U, request["id"], channel, ts)
    unchanged(world, request["id"])


def test_on_behalf_of_human_is_refused(world: SlackWorld) -> None:
    request = world.submit(on_behalf_of=PEOPLE[OLIVIA_U])  # olivia is in sre: qualified but for this
    channel, ts = world.post_card(request["id"])
    assert "acts for" in refused_click(world, OLIVIA_U, request["id"], channel, ts)
    assert "acts for" in refused_submission(world, OLIVIA_U, request["id"], channel, ts)
    unchanged(world, request["id"])


def test_agent_principal_is_refused(world: SlackWorld) -> None:
    request = world.submit(who="agent:exec-bot")
    channel, ts = world.post_card(request["id"])
    assert "is an agent" in refused_click(world, BOT, request["id"], channel, ts)
    assert "is an agent" in refused_submission(world, BOT, request["id"], channel, ts)
    unchanged(world, request["id"])


# --- state ---------------------------------------------------------------------------------------------


def test_click_on_a_request_decided_elsewhere_shows_the_real_outcome(world: SlackWorld) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    denied = httpx.post(
        f"{world.server.url}/v1/actions/{request['id']}/reviews",
        json={"decision": "deny", "comment": "decided in the API"},
        headers=world.server.headers(PEOPLE[SAM_U]),
    )
    assert denied.status_code == 200, denied.text
    said = len(world.ephemerals_for(ALICE_U))
    world.click(ALICE_U, APPROVE, request["id"], channel, ts)
    assert "denied by user:sam@example.com" in world.wait_ephemeral(ALICE_U, said)
    card = world.wait_card(channel, ts, "denied by user:sam@example.com: decided in the API")
    assert not [b for b in card["blocks"] if b["type"] == "actions"]
    # a modal opened before the decision and submitted after it is refused and refreshes the card too
    assert "already denied by user:sam@example.com" in refused_submission(
        world, ALICE_U, request["id"], channel, ts
    )
    view = world.view(request["id"])
    assert view["status"] == "denied" and [r["reviewer"] for r in view["reviews"]] == [PEOPLE[SAM_U]]


def test_step_up_route_cannot_be_approved_in_chat(world: SlackWorld) -> None:
    request = world.submit(action="iam.role.attach", resource="arn:aws:iam::1:role/admin", params={})
    channel, ts = world.post_card(request["id"])
    card = world.fake.message(channel, ts)
    approve = next(e for b in card["blocks"] if b["type"] == "actions" for e in b["elements"] if e.get("url"))
    assert approve["action_id"] == OPEN_CONSOLE and approve["url"] == request["review_url"]
    # a forged Approve click and a forged submission, as if the card had offered one
    refused_click(world, ALICE_U, request["id"], channel, ts)
    refused_submission(world, ALICE_U, request["id"], channel, ts)
    unchanged(world, request["id"])


def test_the_same_person_clicking_twice_counts_once(world: SlackWorld) -> None:
    request = world.submit(action="k8s.delete", resource="k8s://prod/ns/web", params={})  # 2 sre + 1 security
    channel, ts = world.post_card(request["id"])
    modal = world.open_modal(ALICE_U, APPROVE, request["id"], channel, ts)
    assert world.submit_modal(ALICE_U, modal, {}).status_code == 200
    assert "already approved" in refused_click(world, ALICE_U, request["id"], channel, ts)
    again = world.submit_modal(ALICE_U, modal, {})  # the same modal submitted again
    assert again.json()["response_action"] == "errors"
    view = world.view(request["id"])
    assert view["status"] == "pending" and [r["reviewer"] for r in view["reviews"]] == [PEOPLE[ALICE_U]]
    assert view["still_needed"] == ["1 from sre", "1 from security"]


@pytest.mark.postgresql
def test_a_replay_to_another_replica_is_refused(worlds: Worlds) -> None:
    world = worlds.get("postgresql")
    replica = world.server.start_replica()
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    body = click_body(world, request["id"], channel, ts)
    headers = signed_headers(SECRET, body)
    first = httpx.post(f"{world.server.url}/v1/channels/slack/interactivity", content=body, headers=headers)
    assert first.status_code == 200, first.text
    replay = httpx.post(f"{replica.url}/v1/channels/slack/interactivity", content=body, headers=headers)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "replayed"
