"""Attacks on the Teams endpoint of a real `keyturn serve`.

Forged, misdirected, expired and replayed Bot Framework tokens are refused before anything in the activity is
believed (0 accepted), and every click that the review path must refuse is refused with a reason shown to the
clicker, leaving the request unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from support.fake_teams import (
    ALICE_OID,
    APP_ID,
    BOB_OID,
    CAROL_OID,
    OLIVIA_OID,
    OTHER_TENANT_ID,
    SECRET,
    SECRET_ENV,
    STRANGER_OID,
    TEAMS_POLICY,
    TEAMS_USERS,
    TENANT_ID,
    FakeTeams,
)
from support.live import DEFAULT_AGENTS, LiveServer, start_server

ENDPOINT = "/v1/channels/teams/messages"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeTeams, LiveServer]]:
    """One fake Microsoft and one server for the module (each test submits its own requests)."""
    tmp = tmp_path_factory.mktemp("teams")
    fake = FakeTeams.start(tmp, app_id=APP_ID, tenant_id=TENANT_ID, secret=SECRET)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, SECRET)
        patch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_path))
        server = start_server(
            tmp / "server",
            policy=TEAMS_POLICY,
            users=TEAMS_USERS,
            agents=DEFAULT_AGENTS,
            settings={"channels": {"teams": fake.teams_settings(secret_env=SECRET_ENV)}},
            timeout=120,  # a loaded CI machine imports the Teams SDK slowly
        )
    try:
        yield fake, server
    finally:
        server.stop()
        fake.stop()


def click(server: LiveServer, activity: dict[str, Any], token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(server.url + ENDPOINT, json=activity, headers=headers, timeout=30)


def submit(
    server: LiveServer, action: str = "db.export", who: str = "agent:deploy-bot", **fields: Any
) -> str:
    submitted = server.client(who).submit(action, "postgres://prod/customers", {"rows": 5}, **fields)
    assert submitted["status"] == "pending"
    request_id: str = submitted["id"]
    return request_id


def state(server: LiveServer, request_id: str) -> tuple[str, list[str]]:
    record = server.client("user:bob@example.com").get(request_id)
    return record["status"], [r["reviewer"] for r in record["reviews"]]


def refused_text(response: httpx.Response) -> str:
    """What Teams shows the clicker: a message, or the card with a line on top saying why."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["statusCode"] == 200
    return str(body["value"])


# --- the token: refused before anything in the activity is believed ---------------------------------


def assert_unauthorized(server: LiveServer, request_id: str, response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert state(server, request_id) == ("pending", [])


def test_forged_token_signed_by_another_key(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = fake.inbound_token(key=forger)  # same kid, claims all right, wrong key
    assert_unauthorized(
        server, request_id, click(server, fake.invoke("approve", request_id, oid=ALICE_OID), token)
    )


def test_token_for_another_bot(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server)
    token = fake.inbound_token(audience="00000000-1111-4222-8333-444444444444")
    assert_unauthorized(
        server, request_id, click(server, fake.invoke("approve", request_id, oid=ALICE_OID), token)
    )


def test_token_from_another_issuer(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server)
    token = fake.inbound_token(issuer="https://sts.windows.net/attacker/")
    assert_unauthorized(
        server, request_id, click(server, fake.invoke("approve", request_id, oid=ALICE_OID), token)
    )


def test_expired_token(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server)
    token = fake.inbound_token(expires_in=-600)  # past the 5 minutes of clock skew the SDK allows
    assert_unauthorized(
        server, request_id, click(server, fake.invoke("approve", request_id, oid=ALICE_OID), token)
    )


def test_token_without_expiry(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server)
    token = fake.inbound_token(drop=("exp",))
    assert_unauthorized(
        server, request_id, click(server, fake.invoke("approve", request_id, oid=ALICE_OID), token)
    )


def test_no_token(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server)
    assert_unauthorized(
        server, request_id, click(server, fake.invoke("approve", request_id, oid=ALICE_OID), None)
    )


def test_token_for_another_service_url(world: tuple[FakeTeams, LiveServer]) -> None:
    """A token the Bot Framework gave for one service cannot carry an activity that claims another one (the
    `serviceurl` claim binds it), whichever of the two the attacker tries to keep."""
    fake, server = world
    request_id = submit(server)
    evil = "https://attacker.example/teams/"
    theirs = fake.inbound_token(service_url=evil)
    ours = fake.inbound_token()
    activity = fake.invoke("approve", request_id, oid=ALICE_OID)
    assert_unauthorized(server, request_id, click(server, activity, theirs))
    moved = fake.invoke("approve", request_id, oid=ALICE_OID, service_url=evil)
    assert_unauthorized(server, request_id, click(server, moved, ours))
    no_url = {k: v for k, v in activity.items() if k != "serviceUrl"}
    assert_unauthorized(server, request_id, click(server, no_url, ours))


def test_replayed_token_and_activity_count_once(world: tuple[FakeTeams, LiveServer]) -> None:
    """A captured (token, activity) sent again, or the token reused for a new click of the same person, is
    never a second review: the replayed activity is answered from the request's state, and a second
    approval by the same person counts once (two sres needed: still one missing)."""
    fake, server = world
    request_id = submit(server, "k8s.delete")
    token = fake.inbound_token()
    activity = fake.invoke("approve", request_id, oid=ALICE_OID)
    first = click(server, activity, token)
    assert "You approved" in refused_text(first)
    replay = click(server, activity, token)
    assert "already received" in refused_text(replay)
    again = click(server, fake.invoke("approve", request_id, oid=ALICE_OID), token)
    refused_text(again)
    status, reviewers = state(server, request_id)
    assert status == "pending" and reviewers == ["user:alice@example.com"]
    still = server.client("user:bob@example.com").get(request_id)["still_needed"]
    assert still == ["1 from sre"]


# --- who clicked: refused with a reason, the request unchanged ------------------------------------


def test_unlinked_teams_account(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server)
    shown = refused_text(
        click(server, fake.invoke("approve", request_id, oid=STRANGER_OID), fake.inbound_token())
    )
    assert "not linked" in shown and STRANGER_OID in shown
    assert state(server, request_id) == ("pending", [])
    no_oid = refused_text(click(server, fake.invoke("approve", request_id, oid=None), fake.inbound_token()))
    assert "not linked" in no_oid
    assert state(server, request_id) == ("pending", [])


def test_account_of_another_tenant(world: tuple[FakeTeams, LiveServer]) -> None:
    """The same object id in another tenant is another person (oids are unique per tenant only)."""
    fake, server = world
    request_id = submit(server)
    activity = fake.invoke("approve", request_id, oid=ALICE_OID, tenant_id=OTHER_TENANT_ID)
    shown = refused_text(click(server, activity, fake.inbound_token()))
    assert "another Microsoft Entra tenant" in shown
    assert state(server, request_id) == ("pending", [])


def test_linked_user_outside_the_routes_groups(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server)  # needs an sre; carol is security
    shown = refused_text(
        click(server, fake.invoke("approve", request_id, oid=CAROL_OID), fake.inbound_token())
    )
    assert "not counted" in shown or "may not" in shown
    assert state(server, request_id) == ("pending", [])


def test_the_requester_cannot_approve_in_teams(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server, who="user:alice@example.com")
    shown = refused_text(
        click(server, fake.invoke("approve", request_id, oid=ALICE_OID), fake.inbound_token())
    )
    assert "not counted" in shown
    assert state(server, request_id) == ("pending", [])


def test_the_on_behalf_of_human_cannot_approve_in_teams(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server, on_behalf_of="user:olivia@example.com")
    shown = refused_text(
        click(server, fake.invoke("approve", request_id, oid=OLIVIA_OID), fake.inbound_token())
    )
    assert "not counted" in shown
    assert state(server, request_id) == ("pending", [])


def test_deny_without_a_reason_is_refused(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server)
    activity = fake.invoke("deny", request_id, oid=BOB_OID, inputs={"reason": "   "})
    assert "needs a reason" in refused_text(click(server, activity, fake.inbound_token()))
    assert state(server, request_id) == ("pending", [])
    denied = fake.invoke("deny", request_id, oid=BOB_OID, inputs={"reason": "wrong table"})
    refused_text(click(server, denied, fake.inbound_token()))
    assert state(server, request_id) == ("denied", ["user:bob@example.com"])


def test_click_on_a_request_decided_elsewhere_shows_the_outcome(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server)
    server.client("user:bob@example.com").review(request_id, "deny", "decided in the CLI")
    answer = click(server, fake.invoke("approve", request_id, oid=ALICE_OID), fake.inbound_token())
    shown = refused_text(answer)
    card = answer.json()["value"]
    assert answer.json()["type"] == "application/vnd.microsoft.card.adaptive"
    assert "Denied" in shown and "decided in the CLI" in shown and "actions" not in card
    assert state(server, request_id) == ("denied", ["user:bob@example.com"])


def test_step_up_route_cannot_be_approved_in_teams(world: tuple[FakeTeams, LiveServer]) -> None:
    fake, server = world
    request_id = submit(server, "secrets.rotate")
    shown = refused_text(
        click(server, fake.invoke("approve", request_id, oid=ALICE_OID), fake.inbound_token())
    )
    assert "fresh login" in shown
    assert state(server, request_id) == ("pending", [])
    # And the card offers a link to keyturn, not a button, for approving.
    view = server.client("user:alice@example.com").get(request_id)
    from keyturn.channels.teams import build_card, card_json

    card = card_json(build_card(view))
    approve = card["actions"][0]
    assert approve["type"] == "Action.OpenUrl" and approve["url"] == view["review_url"]
    # Denying is the fail-safe direction: it needs no fresh login, in Teams either.
    deny = fake.invoke("deny", request_id, oid=BOB_OID, inputs={"reason": "not now"})
    refused_text(click(server, deny, fake.inbound_token()))
    assert state(server, request_id) == ("denied", ["user:bob@example.com"])
