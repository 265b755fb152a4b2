"""The Slack card and modals are valid Block Kit (checked by the fake's validator, which follows Slack's
documented limits), show the redacted view only, and escape what requesters write."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from keyturn import workflow
from keyturn.channels.slack import (
    APPROVE,
    DENY,
    OPEN_CONSOLE,
    approve_modal,
    card_blocks,
    card_text,
    deny_modal,
    outcome_text,
)
from keyturn.model import (
    ActionRequest,
    Decision,
    Principal,
    PrincipalKind,
    Requirement,
    ReviewDecision,
    Route,
    Verdict,
)
from keyturn.views import request_view
from support.fake_slack import validate_blocks, validate_view

NOW = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
AGENT = Principal(id="agent:deploy-bot", kind=PrincipalKind.AGENT)
ALICE = Principal(id="user:alice@example.com", kind=PrincipalKind.HUMAN, groups=frozenset({"sre"}))


def view_of(
    *,
    params: dict[str, Any] | None = None,
    justification: str = "quarterly report",
    step_up: bool = False,
    decide: ReviewDecision | None = None,
) -> dict[str, Any]:
    route = Route(
        requirements=(Requirement(groups=("sre",), count=1),),
        ttl=timedelta(hours=1),
        editable=("params.rows",),
        redact=("params.connection_string",),
        step_up=step_up,
        tier="high",
    )
    verdict = Verdict(decision=Decision.REVIEW, route=route, policy_revision="sha256:test")
    request = ActionRequest(
        action="db.export",
        resource="postgres://prod/customers",
        params=params
        if params is not None
        else {"rows": 5000, "connection_string": "postgres://u:hunter2@db/x"},
        justification=justification,
        requester=AGENT,
        on_behalf_of="user:olivia@example.com",
    )
    record = workflow.submit("req_1", request, verdict, NOW, "gr_1").record
    if decide is not None:
        comment = "too many rows" if decide is ReviewDecision.DENY else ""
        record = workflow.review(record, ALICE, decide, comment, NOW, grant_id="gr_2").record
    return request_view(record, base_url="https://keyturn.example")


def action_ids(blocks: list[dict[str, Any]]) -> list[str]:
    return [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]


def test_pending_card_is_valid_block_kit_with_everything_a_reviewer_needs() -> None:
    view = view_of()
    blocks = card_blocks(view)
    assert validate_blocks(blocks) == []
    text = json.dumps(blocks)
    for shown in (
        "agent:deploy-bot",
        "user:olivia@example.com",
        "db.export",
        "postgres://prod/customers",
        "quarterly report",
        "high",
        "1 from sre",
        "<!date^",
    ):
        assert shown in text, shown
    assert action_ids(blocks) == [APPROVE, DENY]
    assert "hunter2" not in text  # the redacted view only (guarantee 9)
    assert "hunter2" not in card_text(view)


def test_decided_card_has_no_buttons_and_says_who_decided() -> None:
    for decision, words in (
        (ReviewDecision.APPROVE, "approved by user:alice@example.com"),
        (ReviewDecision.DENY, "denied by user:alice@example.com: too many rows"),
    ):
        blocks = card_blocks(view_of(decide=decision))
        assert validate_blocks(blocks) == []
        assert action_ids(blocks) == []
        assert words in json.dumps(blocks)


def test_step_up_route_approve_is_a_link_to_the_review_url() -> None:
    blocks = card_blocks(view_of(step_up=True))
    assert validate_blocks(blocks) == []
    buttons = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    approve = next(b for b in buttons if b["action_id"] == OPEN_CONSOLE)
    assert approve["url"] == "https://keyturn.example/v1/actions/req_1" and "value" not in approve
    assert APPROVE not in action_ids(blocks)


def test_huge_and_hostile_values_are_clipped_and_escaped() -> None:
    view = view_of(
        params={"rows": 5, "blob": "x" * 50_000}, justification="<!channel> <https://evil|click> " * 400
    )
    blocks = card_blocks(view)
    assert validate_blocks(blocks) == []
    text = json.dumps(blocks)
    assert "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt;" in text


def test_modals_are_valid_and_offer_only_editable_params() -> None:
    view = view_of()
    current = {"rows": 5000, "connection_string": {"redacted": "sha256:…"}}
    modal = approve_modal(view, current, json.dumps({"r": "req_1"}))
    assert validate_view(modal) == []
    inputs = [b["block_id"] for b in modal["blocks"] if b["type"] == "input"]
    assert inputs == ["keyturn_param:params.rows", "keyturn_comment"]
    assert modal["blocks"][1]["element"]["initial_value"] == "5000"
    deny = deny_modal(view, "{}")
    assert validate_view(deny) == []
    reason = next(b for b in deny["blocks"] if b["type"] == "input")
    assert reason["optional"] is False


def test_the_validator_refuses_what_slack_refuses() -> None:
    long_header = [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}]
    assert validate_blocks(long_header)
    duplicate = [
        {
            "type": "actions",
            "elements": [
                {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "A"}},
                {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "B"}},
            ],
        }
    ]
    assert validate_blocks(duplicate)
    assert validate_blocks([{"type": "section", "text": {"type": "mrkdwn", "text": "x"}, "bogus": 1}])
    assert validate_blocks([{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}] * 51)
    assert validate_view({"type": "modal", "title": {"type": "plain_text", "text": "y" * 25}, "blocks": []})


def test_outcome_dm_names_the_outcome() -> None:
    assert "denied by user:alice@example.com: too many rows" in outcome_text(
        view_of(decide=ReviewDecision.DENY)
    )


def test_the_shipped_app_manifest_matches_the_server() -> None:
    from pathlib import Path

    import yaml

    from keyturn.channels.slack_http import INTERACTIVITY_PATH

    manifest = yaml.safe_load(
        (Path(__file__).parents[2] / "examples" / "slack-app-manifest.yaml").read_text(encoding="utf-8")
    )
    assert manifest["settings"]["interactivity"]["request_url"].endswith(INTERACTIVITY_PATH)
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    # chat.postMessage/update/postEphemeral, conversations.open (DM), users.info, users.lookupByEmail
    assert {"chat:write", "im:write", "users:read", "users:read.email"} <= scopes
    assert "commands" not in scopes and "slash_commands" not in manifest.get("features", {})
