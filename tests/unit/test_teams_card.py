"""The Teams card, the users-file link of Teams accounts, the replay memory and the shipped app manifest."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from keyturn.channels.teams import MAX_PARAMS_TEXT, build_card, card_json
from keyturn.channels.teams_http import SeenActivities
from keyturn.identity import UsersFileError
from keyturn.identity.users import UsersFile, parse_users
from support.fake_teams import check_card

ROOT = Path(__file__).resolve().parents[2]
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def view(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "req_0123",
        "status": "pending",
        "action": "db.export",
        "resource": "postgres://prod/customers",
        "params": {"rows": 5000, "connection_string": "[redacted]"},
        "approved_params": None,
        "justification": "monthly report",
        "requester": {"id": "agent:deploy-bot", "kind": "agent"},
        "on_behalf_of": "user:olivia@example.com",
        "verdict": {"tier": "critical", "step_up": False},
        "still_needed": ["2 from sre", "1 from security"],
        "reviews": [],
        "expires_at": "2030-01-07T09:15:00+00:00",
        "review_url": "https://keyturn.example.com/v1/actions/req_0123",
    }
    return {**base, **changes}


def texts(card: dict[str, Any]) -> str:
    return json.dumps(card, ensure_ascii=False)


def test_pending_card_has_everything_and_the_buttons() -> None:
    card = card_json(build_card(view()))
    assert check_card(card) == []
    shown = texts(card)
    for expected in (
        "agent:deploy-bot",
        "user:olivia@example.com",
        "db.export",
        "postgres://prod/customers",
        "critical",
        "2 from sre, 1 from security",
        "2030-01-07 09:15:00 UTC",
        "monthly report",
        "[redacted]",
    ):
        assert expected in shown, expected
    approve, deny = card["actions"]
    assert approve == {
        "type": "Action.Execute",
        "title": "Approve",
        "style": "positive",
        "data": {"request_id": "req_0123"},
        "verb": "approve",
    }
    assert deny["type"] == "Action.ShowCard"
    reason = deny["card"]["body"][0]
    assert reason["id"] == "reason" and reason["isRequired"] is True and reason["errorMessage"]
    assert deny["card"]["actions"][0]["verb"] == "deny"
    assert card["refresh"]["action"] == {
        "type": "Action.Execute",
        "data": {"request_id": "req_0123"},
        "verb": "refresh",
    }


def test_decided_card_shows_who_and_the_outcome_without_buttons() -> None:
    reviews = [{"reviewer": "user:bob@example.com", "decision": "deny", "comment": "wrong table"}]
    card = card_json(build_card(view(status="denied", reviews=reviews, still_needed=[])))
    assert check_card(card) == []
    assert "actions" not in card
    assert not any(e.get("type", "").startswith("Input.") for e in card["body"])
    shown = texts(card)
    assert "Denied" in shown and "user:bob@example.com" in shown and "wrong table" in shown
    assert "Still needed" not in shown


def test_step_up_card_links_to_keyturn_for_approving() -> None:
    card = card_json(build_card(view(verdict={"tier": "critical", "step_up": True})))
    approve = card["actions"][0]
    assert approve["type"] == "Action.OpenUrl"
    assert approve["url"] == "https://keyturn.example.com/v1/actions/req_0123"
    assert "approve" not in {a.get("verb") for a in card["actions"]}


def test_agent_text_is_never_markdown() -> None:
    """An agent's justification cannot turn into a link or a fake heading on the reviewer's screen."""
    trap = "[Approved by security](https://evil.example) **urgent**"
    card = card_json(build_card(view(justification=trap, resource=trap)))
    for element in card["body"]:
        if element["type"] == "TextBlock":
            assert "evil.example" not in element["text"]
    runs = [r for e in card["body"] if e["type"] == "RichTextBlock" for r in e["inlines"]]
    assert any(r["text"] == trap for r in runs)


def test_huge_params_are_cut_to_fit_a_card() -> None:
    card = card_json(build_card(view(params={"blob": "x" * 100_000})))
    assert check_card(card) == []
    assert len(json.dumps(card)) < 28_000
    assert "cut" in texts(card) and MAX_PARAMS_TEXT < 28_000


def test_notice_is_only_on_the_clickers_card() -> None:
    plain = texts(card_json(build_card(view())))
    noticed = texts(card_json(build_card(view(), notice="Your approve was not counted: why")))
    assert "not counted" not in plain and "Your approve was not counted: why" in noticed


# --- users file: entra_oid ------------------------------------------------------------------------


def test_entra_oid_links_one_user_case_insensitively(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(
        "users:\n"
        "  - id: user:alice@example.com\n"
        "    groups: [sre]\n"
        "    entra_oid: A11CE000-0000-4000-8000-000000000001\n"
        "  - id: user:bob@example.com\n"
    )
    users = UsersFile(path)
    found = users.user_by_entra_oid("a11ce000-0000-4000-8000-000000000001")
    assert found is not None and found.id == "user:alice@example.com"
    assert users.user_by_entra_oid("A11CE000-0000-4000-8000-000000000001") == found
    assert users.user_by_entra_oid("b0b00000-0000-4000-8000-000000000002") is None


def test_one_entra_account_cannot_be_two_users() -> None:
    text = (
        "users:\n"
        "  - id: user:alice@example.com\n"
        "    entra_oid: a11ce000-0000-4000-8000-000000000001\n"
        "  - id: user:mallory@example.com\n"
        "    entra_oid: a11ce000-0000-4000-8000-000000000001\n"
    )
    with pytest.raises(UsersFileError, match="given to two users"):
        parse_users(text, "users.yaml")


def test_a_malformed_entra_oid_names_file_and_line() -> None:
    text = "users:\n  - id: user:alice@example.com\n    entra_oid: alice\n"
    with pytest.raises(UsersFileError, match=r"users.yaml:3:16: users.0.entra_oid"):
        parse_users(text, "users.yaml")


# --- replays ----------------------------------------------------------------------------------------


def test_an_activity_id_is_answered_once_and_memory_is_bounded() -> None:
    seen = SeenActivities(size=3)
    assert seen.first_time("a") and not seen.first_time("a")
    for name in ("b", "c", "d"):
        assert seen.first_time(name)
    assert seen.first_time("a")  # forgotten: the oldest went first (the review path still counts it once)


# --- the app manifest -------------------------------------------------------------------------------


def test_the_teams_app_manifest_is_complete() -> None:
    folder = ROOT / "examples" / "teams-app"
    manifest = json.loads((folder / "manifest.json").read_text())
    version = manifest["manifestVersion"]
    assert manifest["$schema"].endswith(f"/v{version}/MicrosoftTeams.schema.json")
    for key in ("version", "id", "developer", "name", "description", "icons", "accentColor", "bots"):
        assert key in manifest, key
    assert GUID.match(manifest["id"])
    assert len(manifest["name"]["short"]) <= 30 and len(manifest["description"]["short"]) <= 80
    (bot,) = manifest["bots"]
    assert GUID.match(bot["botId"]) and set(bot["scopes"]) <= {"team", "groupChat", "personal"}
    assert "team" in bot["scopes"] and bot["isNotificationOnly"] is False  # cards have buttons
    for icon, size in ((manifest["icons"]["color"], 192), (manifest["icons"]["outline"], 32)):
        data = (folder / icon).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == (size, size)
