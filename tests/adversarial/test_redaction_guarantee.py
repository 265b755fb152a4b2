"""Guarantee 9 (and 2) against the holes a security review found: redactions of a rule that lost to a deny,
a redacted justification, credential-looking values anywhere in the API view, CEL errors quoting a value,
and an `on_behalf_of` spelled differently from the human's id."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyturn import workflow
from keyturn.model import ActionRequest, Principal, PrincipalKind, ReviewDecision
from keyturn.policy import load_policy
from keyturn.redact import UNKEYED
from keyturn.views import request_view

POLICY = """\
version: 1
defaults: {decision: review, approvers: [security], ttl: 1h}
rules:
  - name: exports need an sre
    match: {action: db.export}
    decision: review
    approvers: [sre]
    redact: [params.customer_ssn, justification, context.lease]
  - name: huge exports are refused
    match: {action: db.export}
    when: "params.rows > 1000000"
    decision: deny
    reason: too big
  - name: leases are checked
    match: {action: db.export}
    when: "has(context.lease) && duration(context.lease) > duration('1h')"
    decision: review
    approvers: [security]
"""
NOW = datetime(2030, 1, 7, 9, tzinfo=UTC)
AGENT = Principal(id="agent:bot", kind=PrincipalKind.AGENT)
SSN = "078-05-1120"
SECRET_WORDS = "pw is Hunter2-TopSecret"
GITHUB_TOKEN = "ghp_" + "A" * 36
URL_WITH_PASSWORD = "postgres://admin:Sup3rS3cret@prod-db/customers"


def submit(tmp_path: Path, rows: int, **extra: Any) -> workflow.Transition:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    request = ActionRequest(
        action="db.export",
        resource="postgres://prod/customers",
        params={"rows": rows, "customer_ssn": SSN},
        justification=f"ticket says {SECRET_WORDS}",
        requester=AGENT,
        **extra,
    )
    verdict = load_policy([policy_file]).evaluate(request, NOW)
    return workflow.submit("req_1", request, verdict, NOW, "gr_1")


def test_a_deny_that_outranks_the_review_rule_keeps_its_redactions(tmp_path: Path) -> None:
    transition = submit(tmp_path, 5_000_000)
    assert transition.record.status.value == "denied"
    ledger = json.dumps([e.payload for e in transition.events])
    assert SSN not in ledger and SECRET_WORDS not in ledger
    assert SSN not in json.dumps(request_view(transition.record, base_url="http://kt", redactor=UNKEYED))


def test_a_redacted_justification_is_redacted_in_the_ledger_and_the_api(tmp_path: Path) -> None:
    transition = submit(tmp_path, 10)
    assert transition.record.status.value == "pending"
    submitted = transition.events[0].payload
    assert submitted["justification"]["redacted"].startswith("sha256:")
    view = request_view(transition.record, base_url="http://kt", redactor=UNKEYED)
    assert SECRET_WORDS not in json.dumps(view) and SSN not in json.dumps(view)
    assert view["params"]["rows"] == 10  # only what policy names is hidden


def test_a_cel_error_does_not_quote_a_redacted_value_in_the_api(tmp_path: Path) -> None:
    transition = submit(tmp_path, 10, context={"lease": "s.Hunter2VaultToken"})
    view = json.dumps(request_view(transition.record, base_url="http://kt", redactor=UNKEYED))
    assert "Hunter2VaultToken" not in view
    assert "could not be evaluated" in view  # it failed closed, and says so


def test_the_on_behalf_of_human_cannot_approve_under_another_spelling(tmp_path: Path) -> None:
    transition = submit(tmp_path, 10, on_behalf_of="User:Olivia@Example.com")
    olivia = Principal(id="user:olivia@example.com", kind=PrincipalKind.HUMAN, groups=frozenset({"sre"}))
    with pytest.raises(workflow.OnBehalfOfCannotApprove):
        workflow.review(transition.record, olivia, ReviewDecision.APPROVE, "mine", NOW, grant_id="gr_2")
    requester_twin = Principal(id="AGENT:BOT", kind=PrincipalKind.HUMAN, groups=frozenset({"sre"}))
    with pytest.raises(workflow.SelfReview):
        workflow.review(transition.record, requester_twin, ReviewDecision.APPROVE, "", NOW, grant_id="gr_3")


def test_the_api_view_redacts_credentials_wherever_they_appear(live_server: Any) -> None:
    with live_server.client("agent:deploy-bot") as bot, live_server.client("user:alice@example.com") as alice:
        request_id = bot.submit(
            "db.export", URL_WITH_PASSWORD, {"rows": 10}, justification=f"use token {GITHUB_TOKEN}"
        )["id"]
        alice.review(request_id, "approve", f"ok, reuse {GITHUB_TOKEN}")
        bot.consume(bot.get(request_id)["grant"])  # the requester still gets its own grant in clear
        bot.result(request_id, "failed", detail=f"psql {URL_WITH_PASSWORD} refused")
        seen = alice.get(request_id)
    shown = json.dumps(seen)
    assert GITHUB_TOKEN not in shown and "Sup3rS3cret" not in shown
    assert seen["reviews"][0]["comment"]["redacted"].startswith("hmac-sha256:")  # keyed (guarantee 9)


def test_on_behalf_of_must_be_a_principal_id(live_server: Any) -> None:
    answer = httpx.post(
        f"{live_server.url}/v1/actions",
        json={"action": "db.export", "params": {"rows": 1}, "on_behalf_of": "olivia@example.com"},
        headers=live_server.headers("agent:deploy-bot"),
    )
    assert answer.status_code == 422 and answer.json()["error"]["message"].startswith("body.on_behalf_of")


def test_approved_params_are_redacted_like_the_params() -> None:
    from keyturn.model import Decision, Requirement, Route, Verdict

    route = Route(
        requirements=(Requirement(groups=("sre",)),),
        ttl=timedelta(hours=1),
        editable=("params.rows",),
        redact=("params.customer_ssn",),
    )
    request = ActionRequest(action="db.export", params={"rows": 5000, "customer_ssn": SSN}, requester=AGENT)
    submitted = workflow.submit(
        "req_1", request, Verdict(decision=Decision.REVIEW, route=route), NOW, "gr_1"
    ).record
    alice = Principal(id="user:alice@example.com", kind=PrincipalKind.HUMAN, groups=frozenset({"sre"}))
    approved = workflow.review(
        submitted,
        alice,
        ReviewDecision.APPROVE,
        "narrowed",
        NOW,
        edited_params={"rows": 10, "customer_ssn": SSN},
        reevaluate=lambda _: Verdict(decision=Decision.REVIEW, route=route),
        grant_id="gr_2",
    ).record
    assert approved.approved_params == {"rows": 10, "customer_ssn": SSN}
    view = request_view(approved, base_url="http://kt", redactor=UNKEYED)
    assert SSN not in json.dumps(view)
    assert view["approved_params"]["rows"] == 10
