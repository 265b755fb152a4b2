"""The one redacted view of a request that every surface shows: REST API, CLI, console and chat channels.

Nothing reaches a person or an agent about a request except through `request_view`, so a secret that the
policy redacts (or that looks like a credential) is redacted identically everywhere (guarantee 9).
"""

from __future__ import annotations

from typing import Any

from keyturn import workflow
from keyturn.model import Decision, RequestRecord, RuleMatch, Status
from keyturn.redact import Redactor


def review_url(base_url: str, request_id: str) -> str:
    """Where a reviewer finds the request. Until the web console exists this is the request in the API
    (GET it with a token; POST .../reviews to decide) rather than a link that would answer 404."""
    return f"{base_url}/v1/actions/{request_id}"


def request_view(record: RequestRecord, *, base_url: str, redactor: Redactor) -> dict[str, Any]:
    """The request as people and agents see it: secrets redacted, route and outstanding approvals spelled out.

    Redaction covers the whole view, as it does every ledger event: the paths policy names (in `params`,
    `approved_params`, `context`, `justification`) and, anywhere (resource, comments, result detail),
    values that look like credentials. `history` and `grant` are left to the caller: they depend on who
    is looking. `redactor` is the server's (`Keyturn.redactor`): markers carry the same keyed digests as the
    ledger's, so a surface never offers an unkeyed digest that a guess could be checked against.
    """
    request = record.request
    verdict = record.verdict
    route = verdict.route
    redaction = verdict.redactions
    view = {
        "id": record.id,
        "status": record.status.value,
        "action": request.action,
        "resource": request.resource,
        "params": request.params,
        "approved_params": record.approved_params,
        "justification": request.justification,
        "context": request.context,
        "requester": {"id": request.requester.id, "kind": request.requester.kind.value},
        "on_behalf_of": request.on_behalf_of,
        "idempotency_key": request.idempotency_key,
        "verdict": {
            "decision": verdict.decision.value,
            "reason": verdict.reason,
            "rules": [_visible_rule(m) for m in verdict.rules],
            "policy_revision": verdict.policy_revision,
            "tier": route.tier if route else None,
            "requirements": [r.model_dump(mode="json") for r in route.requirements] if route else [],
            "editable": list(route.editable) if route else [],
            "step_up": route.step_up if route else False,
        },
        "still_needed": workflow.outstanding(record),
        "reviews": [
            {
                "reviewer": r.reviewer,
                "decision": r.decision.value,
                "comment": r.comment,
                "params_digest": r.params_digest,
                "edited": r.params is not None and r.params != request.params,
                "at": r.at.isoformat(),
            }
            for r in record.reviews
        ],
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "grant_expires_at": record.grant.expires_at.isoformat() if record.grant else None,
        "result": record.result,
        "decided": record.status is not Status.PENDING,
        "allowed_without_review": verdict.decision is Decision.ALLOW,
        "review_url": review_url(base_url, record.id),
    }
    approved = tuple(
        p.replace("params.", "approved_params.", 1) for p in redaction if p.startswith("params.")
    )
    return redactor.document(view, (*redaction, *approved))


def _visible_rule(match: RuleMatch) -> dict[str, Any]:
    shown = match.model_dump(mode="json")
    if match.error is not None:
        # A CEL error can quote the value it failed on, which may be one policy redacts: say that it failed
        # (the request failed closed), not what it said; `keyturn policy explain` shows the details.
        shown["error"] = "the condition could not be evaluated (the rule counts as matched: fails closed)"
    return shown
