"""Passkey-signed reviews without a browser: a software authenticator (P-256, as a platform authenticator
signs) makes real WebAuthn assertions, which `keyturn.passkeys` and the workflow check."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from keyturn import passkeys, workflow
from keyturn.model import (
    Authentication,
    AuthMethod,
    Principal,
    PrincipalKind,
    ReviewDecision,
    params_digest,
)
from support.soft_authenticator import UP, SoftAuthenticator


def _statement(**changes: Any) -> dict[str, Any]:
    base = {
        "request_id": "req_1",
        "action": "db.export",
        "resource": "postgres://prod",
        "params_digest": params_digest({"rows": 10}),
        "decision": "approve",
        "reviewer": "user:alice@example.com",
    }
    return passkeys.statement(**{**base, **changes})


def test_a_signature_over_the_statement_verifies_and_counts_forward() -> None:
    device = SoftAuthenticator()
    document = _statement()
    assertion = device.assert_(passkeys.new_challenge(document))
    assert passkeys.verify_assertion(assertion, document) == (None, 1)
    # The server's stored count is 1 now: the same count again is a clone or a replay.
    problem, _ = passkeys.verify_assertion(assertion, document, sign_count=1)
    assert problem is not None and "does not verify" in problem


@pytest.mark.parametrize(
    "other",
    [
        {"params_digest": params_digest({"rows": 1_000_000})},
        {"decision": "deny"},
        {"reviewer": "user:mallory@example.com"},
        {"request_id": "req_2"},
        {"action": "db.drop"},
    ],
)
def test_a_signature_proves_only_its_own_statement(other: dict[str, Any]) -> None:
    device = SoftAuthenticator()
    assertion = device.assert_(passkeys.new_challenge(_statement()))
    problem, _ = passkeys.verify_assertion(assertion, _statement(**other))
    assert problem is not None and "different statement" in problem


def test_without_user_verification_it_is_refused() -> None:
    device = SoftAuthenticator()
    document = _statement()
    problem, _ = passkeys.verify_assertion(
        device.assert_(passkeys.new_challenge(document), flags=UP), document
    )
    assert problem is not None and "verif" in problem.lower()


def test_a_changed_signature_or_origin_is_refused() -> None:
    device = SoftAuthenticator()
    document = _statement()
    good = device.assert_(passkeys.new_challenge(document))
    flipped = good.signature[:-2] + ("00" if good.signature[-2:] != "00" else "01")
    assert passkeys.verify_assertion(good.model_copy(update={"signature": flipped}), document)[0] is not None
    phished = device.assert_(passkeys.new_challenge(document), origin="http://evil.example")
    assert passkeys.verify_assertion(phished, document)[0] is not None


def test_the_workflow_refuses_a_signature_over_another_decision(factory: Any) -> None:
    verdict = factory.review_verdict("sre")
    assert verdict.route is not None
    verdict = verdict.model_copy(
        update={"route": verdict.route.model_copy(update={"editable": ("params.rows",)})}
    )
    transition = factory.submit(verdict, params={"rows": 5000})
    record = transition.record
    alice = factory.human("alice", "sre")
    device = SoftAuthenticator()
    signed_for = passkeys.statement(
        request_id=record.id,
        action=record.request.action,
        resource=record.request.resource,
        params_digest=params_digest({"rows": 5000}),
        decision="approve",
        reviewer=alice.id,
    )
    assertion = device.assert_(passkeys.new_challenge(signed_for))
    signer = alice.model_copy(
        update={"authn": Authentication(method=AuthMethod.PASSKEY, at=datetime.now(UTC), passkey=assertion)}
    )
    now = factory.tick()
    # The same signature cannot carry an edit it did not sign...
    with pytest.raises(workflow.SignatureMismatch):
        workflow.review(
            record,
            signer,
            ReviewDecision.APPROVE,
            "",
            now,
            edited_params={"rows": 10},
            reevaluate=lambda r: record.verdict,
            grant_id=factory.grant_id(),
        )
    # ...nor a deny, nor another reviewer's review.
    with pytest.raises(workflow.SignatureMismatch):
        workflow.review(record, signer, ReviewDecision.DENY, "no", now, grant_id=factory.grant_id())
    bob = Principal(id="user:bob@example.com", kind=PrincipalKind.HUMAN, groups=frozenset({"sre"}))
    with pytest.raises(workflow.SignatureMismatch):
        workflow.review(
            record,
            bob.model_copy(update={"authn": signer.authn}),
            ReviewDecision.APPROVE,
            "",
            now,
            grant_id=factory.grant_id(),
        )
    # What it signed is recorded with the statement, and verifies from the event alone.
    done = workflow.review(record, signer, ReviewDecision.APPROVE, "", now, grant_id=factory.grant_id())
    reviewed = next(e for e in done.events if e.type.value == "request.reviewed")
    assert reviewed.payload["passkey"]["statement"] == signed_for
    event = {"type": "request.reviewed", "request_id": record.id, "payload": reviewed.payload}
    assert passkeys.recorded_problem(event) is None
    forged = json.loads(json.dumps(event))
    forged["payload"]["params_digest"] = params_digest({"rows": 1})
    assert "params_digest" in (passkeys.recorded_problem(forged) or "")


def test_a_tier_may_require_passkey_signed_approvals(tmp_path: Any, factory: Any) -> None:
    from keyturn.policy import load_policy

    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\n"
        "defaults: {approvers: [security], ttl: 1h}\n"
        "tiers:\n"
        "  signed: {quorum: 1, approvers: [sre], signature: passkey}\n"
        "rules:\n"
        "  - {name: payments, match: {action: pay.out}, decision: review, tier: signed}\n"
        "  - {name: exports, match: {action: db.export}, decision: review, quorum: 1, approvers: [sre]}\n"
    )
    compiled = load_policy([path])
    agent = factory.agent
    from keyturn.model import ActionRequest

    now = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
    verdict = compiled.evaluate(ActionRequest(action="pay.out", params={"eur": 5}, requester=agent), now)
    assert verdict.route is not None and verdict.route.signature == "passkey"
    plain = compiled.evaluate(ActionRequest(action="db.export", requester=agent), now)
    assert plain.route is not None and plain.route.signature is None

    record = factory.submit(verdict, params={"eur": 5}).record
    alice = factory.human("alice", "sre").model_copy(
        update={"authn": Authentication(method=AuthMethod.OIDC, at=factory.now)}
    )
    with pytest.raises(workflow.SignatureRequired):
        workflow.review(
            record, alice, ReviewDecision.APPROVE, "", factory.tick(), grant_id=factory.grant_id()
        )
    # A deny needs no signature (the fail-safe direction).
    denied = workflow.review(
        record, alice, ReviewDecision.DENY, "no", factory.now, grant_id=factory.grant_id()
    )
    assert denied.record.status.value == "denied"

    device = SoftAuthenticator()
    document = passkeys.statement(
        request_id=record.id,
        action=record.request.action,
        resource=record.request.resource,
        params_digest=params_digest({"eur": 5}),
        decision="approve",
        reviewer=alice.id,
    )
    signer = alice.model_copy(
        update={
            "authn": Authentication(
                method=AuthMethod.PASSKEY,
                at=factory.now,
                passkey=device.assert_(passkeys.new_challenge(document)),
            )
        }
    )
    approved = workflow.review(
        record, signer, ReviewDecision.APPROVE, "", factory.now, grant_id=factory.grant_id()
    )
    assert approved.record.status.value == "approved"


def test_an_edit_onto_a_passkey_signed_tier_is_refused(tmp_path: Any, factory: Any) -> None:
    """The record keeps its submitted route: an edit that policy would put on a `signature: passkey` tier
    would otherwise be approved (here: by one unsigned click) without the signature the tier demands."""
    from keyturn.model import ActionRequest
    from keyturn.policy import load_policy

    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\n"
        "defaults: {approvers: [sre], ttl: 1h}\n"
        "tiers:\n"
        "  signed: {quorum: 1, approvers: [sre], signature: passkey}\n"
        "rules:\n"
        "  - name: big\n"
        "    match: {action: db.export}\n"
        "    when: 'params.eur > 100'\n"
        "    decision: review\n"
        "    tier: signed\n"
        "  - name: small\n"
        "    match: {action: db.export}\n"
        "    decision: review\n"
        "    quorum: 1\n"
        "    approvers: [sre]\n"
        "    editable: [params.eur]\n"
    )
    compiled = load_policy([path])
    now = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
    verdict = compiled.evaluate(
        ActionRequest(action="db.export", params={"eur": 5}, requester=factory.agent), now
    )
    assert verdict.route is not None and verdict.route.signature is None
    record = factory.submit(verdict, params={"eur": 5}).record
    alice = factory.human("alice", "sre").model_copy(
        update={"authn": Authentication(method=AuthMethod.OIDC, at=factory.now)}
    )

    def reevaluate(edited: ActionRequest) -> Any:
        return compiled.evaluate(edited, now)

    assert compiled.evaluate(record.request.with_params({"eur": 5000}), now).route.signature == "passkey"
    with pytest.raises(workflow.EditRefused, match="passkey-signed"):
        workflow.review(
            record,
            alice,
            ReviewDecision.APPROVE,
            "",
            factory.tick(),
            edited_params={"eur": 5000},
            reevaluate=reevaluate,
            grant_id=factory.grant_id(),
        )
    # An edit that stays off the signed tier is still an edit like any other.
    narrowed = workflow.review(
        record,
        alice,
        ReviewDecision.APPROVE,
        "",
        factory.now,
        edited_params={"eur": 3},
        reevaluate=reevaluate,
        grant_id=factory.grant_id(),
    )
    assert narrowed.record.status.value == "approved"
    assert narrowed.record.approved_params == {"eur": 3}
