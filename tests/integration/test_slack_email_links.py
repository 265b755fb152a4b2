"""`link_by_email: true`: a Slack user whose e-mail Slack has confirmed maps to the keyturn user of that
address without a link code; an unconfirmed address, or one keyturn's identity source does not know, does
not. The on-behalf-of human is found by e-mail for the outcome DM."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyturn.channels.slack import APPROVE
from keyturn.store import Store
from keyturn.store.chat import ChatAccounts
from support.fake_slack import TEAM, SlackUser
from support.slack_live import SlackWorld

USERS = [
    SlackUser("U0ALICE", "Alice@Example.com"),  # confirmed: maps to user:alice@example.com
    SlackUser("U0BOB", "bob@example.com", email_confirmed=False),  # unconfirmed: never maps
    SlackUser("U0MALLORY", "mallory@example.com"),  # confirmed, but keyturn has no such user
    SlackUser("U0OLIVIA", "olivia@example.com"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlackWorld]:
    started = SlackWorld.start(Path(tmp_path_factory.mktemp("slack-email")), link_by_email=True, users=USERS)
    try:
        yield started
    finally:
        started.stop()


def test_confirmed_email_links_and_reviews(world: SlackWorld) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    modal = world.open_modal("U0ALICE", APPROVE, request["id"], channel, ts)
    assert world.submit_modal("U0ALICE", modal, {}).status_code == 200
    assert [r["reviewer"] for r in world.view(request["id"])["reviews"]] == ["user:alice@example.com"]
    store = Store.open(world.database_url)
    try:
        link = ChatAccounts(store).link("slack", TEAM, "U0ALICE")
    finally:
        store.close()
    assert link is not None and link.method == "email" and link.principal_id == "user:alice@example.com"


@pytest.mark.parametrize("user", ["U0BOB", "U0MALLORY"])
def test_unconfirmed_or_unknown_email_does_not_link(world: SlackWorld, user: str) -> None:
    request = world.submit()
    channel, ts = world.post_card(request["id"])
    code = world.link_code(user, request["id"], channel, ts)  # offered the code flow instead
    assert code.startswith("ktl_")
    assert world.view(request["id"])["reviews"] == []


def test_outcome_dm_finds_the_on_behalf_of_human_by_email(world: SlackWorld) -> None:
    request = world.submit(on_behalf_of="user:olivia@example.com")
    channel, ts = world.post_card(request["id"])
    modal = world.open_modal("U0ALICE", APPROVE, request["id"], channel, ts)
    assert world.submit_modal("U0ALICE", modal, {}).status_code == 200
    # The server's own outbox tells her (an OUTCOME row written with the approval), found by her e-mail.
    deadline = time.monotonic() + 60
    while not world.fake.messages.get("DU0OLIVIA") and time.monotonic() < deadline:
        time.sleep(0.2)
    dm = list(world.fake.messages["DU0OLIVIA"].values())
    assert len(dm) == 1 and "approved by user:alice@example.com" in dm[0]["text"]
