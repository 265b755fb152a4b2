"""Audit evidence from the ledger: every executed action's approval chain, totals, anomalies, controls.

The report is rebuilt from ledger events alone (not from the mutable request rows), so what it shows is
what the verified Merkle log commits to. Four anomalies are checked for every execution; each is made
impossible by `keyturn.workflow`, and the report proves it held by checking the evidence, not by trusting
the code:

- an execution without a qualifying approval (policy allowed it, or enough distinct qualified humans
  approved the exact params before the grant was consumed);
- an approver who is the requester or the human the agent acted for;
- an approval at or after the request's expiry;
- a consumed params digest different from the approved one (or a grant consumed twice).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyturn.ledger.verify import VerifyResult
    from keyturn.store import StoredCheckpoint

CHECKS = [
    (
        "unapproved_execution",
        "Every execution had a qualifying approval",
        "Allowed by a policy rule, or approved by enough distinct humans from the route's groups for the "
        "exact "
        "params, before the grant was consumed.",
    ),
    (
        "self_approval",
        "No approver was the requester or the human the agent acted for",
        "Separation of duties: the requester and its on-behalf-of owner never count toward quorum.",
    ),
    (
        "late_approval",
        "No approval at or after expiry",
        "Pending requests fail closed at their deadline; nothing is decided afterwards.",
    ),
    (
        "params_mismatch",
        "What ran is what was approved, exactly once",
        "The consumed grant's params digest equals the approved digest, and each grant was consumed once.",
    ),
]

CONTROLS = [
    (
        "SOC 2",
        "CC6.1",
        "Logical access controls",
        "Every privileged action passes a policy decision (rules and policy revision recorded per request) "
        "before a scoped, single-use grant is issued.",
    ),
    (
        "SOC 2",
        "CC6.3",
        "Authorisation of access changes",
        "Approvals name each approver, their groups at the moment of review and the requirement they met.",
    ),
    (
        "SOC 2",
        "CC7.2",
        "Monitoring for anomalies",
        "The anomaly checks of this report run over the whole period; the ledger verification detects any "
        "alteration, deletion, reordering or truncation of the record.",
    ),
    (
        "SOC 2",
        "CC8.1",
        "Change management",
        "Each change carries requester, justification, approvals, approved vs executed params digests and "
        "the "
        "outcome reported by the executor.",
    ),
    (
        "ISO 27001",
        "A.5.15",
        "Access control",
        "Policy rules route each action to the groups entitled to approve it; denials carry reasons.",
    ),
    (
        "ISO 27001",
        "A.8.2",
        "Privileged access rights",
        "Privileged actions run only with a one-time grant bound to the approved action, resource and "
        "params.",
    ),
    (
        "ISO 27001",
        "A.8.15",
        "Logging",
        "Events are written in the same transaction as each state change, hashed into an RFC 6962 Merkle "
        "tree "
        "and covered by Ed25519-signed checkpoints.",
    ),
    (
        "NIST 800-53",
        "AC-5",
        "Separation of duties",
        "Requesters and on-behalf-of owners never approve; each human counts once (self_approval check).",
    ),
    (
        "NIST 800-53",
        "AC-6",
        "Least privilege",
        "Grants are single-use, short-lived and bound to the approved params digest (params_mismatch check).",
    ),
    (
        "NIST 800-53",
        "AU-9",
        "Protection of audit information",
        "Tampering is detectable offline: leaf hashes, Merkle roots, signed checkpoints and witness copies.",
    ),
    (
        "NIST 800-53",
        "AU-10",
        "Non-repudiation",
        "Each event is attributed to an authenticated actor and committed to by a signed checkpoint; "
        "`keyturn ledger prove` shows one event to a third party.",
    ),
]


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _new_request(request_id: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "action": None,
        "resource": None,
        "requester": None,
        "on_behalf_of": None,
        "justification": "",
        "submitted_at": None,
        "decision": None,
        "rules": [],
        "policy_revision": None,
        "tier": None,
        "requirements": [],
        "submitted_digest": None,
        "expires_at": None,
        "reviews": [],
        "edits": [],
        "approved": None,
        "allowed": False,
        "grants": [],
        "consumptions": [],
        "outcome": None,
        "status": "submitted",
        "first_seq": None,
    }


def _fold(requests: dict[str, dict[str, Any]], event: dict[str, Any]) -> None:
    request_id = event.get("request_id")
    if not isinstance(request_id, str):
        return
    req = requests.setdefault(request_id, _new_request(request_id))
    kind, payload, at = event.get("type"), event.get("payload") or {}, event.get("ts")
    if req["first_seq"] is None:
        req["first_seq"] = event.get("seq")
    if kind == "request.submitted":
        verdict = payload.get("verdict") or {}
        req.update(
            action=payload.get("action"),
            resource=payload.get("resource"),
            requester=payload.get("requester"),
            on_behalf_of=payload.get("on_behalf_of"),
            justification=payload.get("justification") or "",
            submitted_at=at,
            decision=verdict.get("decision"),
            rules=verdict.get("rules") or [],
            policy_revision=verdict.get("policy_revision"),
            tier=verdict.get("tier"),
            requirements=verdict.get("requirements") or [],
            submitted_digest=payload.get("params_digest"),
        )
    elif kind == "request.pending":
        req["expires_at"] = payload.get("expires_at")
        req["status"] = "pending"
    elif kind == "request.reviewed":
        req["reviews"].append(
            {
                "reviewer": payload.get("reviewer", event.get("actor")),
                "groups": payload.get("reviewer_groups") or [],
                "decision": payload.get("decision"),
                "comment": payload.get("comment") or "",
                "params_digest": payload.get("params_digest"),
                "at": at,
                # `keyturn ledger verify` checks the signature itself; the report names the key.
                "passkey": (payload.get("passkey") or {}).get("key_id"),
            }
        )
    elif kind == "request.params_edited":
        req["edits"].append(
            {
                "by": event.get("actor"),
                "before": payload.get("before_digest"),
                "after": payload.get("after_digest"),
                "at": at,
            }
        )
    elif kind == "request.approved":
        req["approved"] = {
            "at": at,
            "approvers": payload.get("approvers") or [],
            "params_digest": payload.get("params_digest"),
        }
        req["status"] = "approved"
    elif kind == "request.allowed":
        req["allowed"] = True
        req["status"] = "allowed"
    elif kind == "grant.issued":
        req["grants"].append(
            {"grant_id": payload.get("grant_id"), "params_digest": payload.get("params_digest"), "at": at}
        )
    elif kind == "grant.consumed":
        req["consumptions"].append(
            {
                "grant_id": payload.get("grant_id"),
                "params_digest": payload.get("params_digest"),
                "executor": payload.get("executor", event.get("actor")),
                "at": at,
            }
        )
        req["status"] = "executing"
    elif kind in ("request.succeeded", "request.failed"):
        req["outcome"] = {
            "status": kind.split(".")[1],
            "at": at,
            "output_digest": payload.get("output_digest"),
            "detail": payload.get("detail") or "",
        }
        req["status"] = kind.split(".")[1]
    elif kind in ("request.denied", "request.expired", "request.cancelled", "grant.expired"):
        req["status"] = "expired" if kind == "grant.expired" else kind.split(".")[1]


def _anomalies(req: dict[str, Any]) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []

    def flag(check: str, detail: str) -> None:
        found.append({"request_id": req["id"], "check": check, "detail": detail})

    consumed = req["consumptions"][0]
    consumed_at = _time(consumed["at"])
    people = {req["requester"], req["on_behalf_of"]} - {None}
    approved = req["approved"]
    expires = _time(req["expires_at"])
    if req["decision"] == "allow" and req["allowed"]:
        approved_digest = req["submitted_digest"]
    elif req["decision"] == "review" and approved is not None:
        approved_digest = approved["params_digest"]
        approved_at = _time(approved["at"])
        if consumed_at is not None and approved_at is not None and approved_at > consumed_at:
            flag("unapproved_execution", "the grant was consumed before the approval")
        needed = sum(int(r.get("count", 1)) for r in req["requirements"])
        groups = {g for r in req["requirements"] for g in r.get("groups", [])}
        qualified = {
            r["reviewer"]
            for r in req["reviews"]
            if r["decision"] == "approve"
            and r["params_digest"] == approved_digest
            and set(r["groups"]) & groups
            and r["reviewer"] not in people
        }
        names = {a.get("reviewer") for a in approved["approvers"]}
        if len(qualified & names) < needed:
            flag(
                "unapproved_execution",
                f"{len(qualified & names)} qualified distinct approvals of the executed params, "
                f"{needed} required",
            )
        for who in sorted(names & people):
            flag("self_approval", f"{who} approved a request it made or that was made on its behalf")
        for review in req["reviews"]:
            at = _time(review["at"])
            if review["decision"] == "approve" and expires is not None and at is not None and at >= expires:
                flag(
                    "late_approval",
                    f"{review['reviewer']} approved at {review['at']}, after expiry at {req['expires_at']}",
                )
    else:
        approved_digest = None
        flag(
            "unapproved_execution",
            f"executed although policy said {req['decision'] or 'nothing'} and no approval is recorded",
        )
    for review in req["reviews"]:
        if review["decision"] == "approve" and review["reviewer"] in people and approved is None:
            flag("self_approval", f"{review['reviewer']} approved its own request")
    if approved_digest is not None and consumed["params_digest"] != approved_digest:
        flag("params_mismatch", f"consumed {consumed['params_digest']}, approved {approved_digest}")
    if len(req["consumptions"]) > 1:
        flag("params_mismatch", f"the grant was consumed {len(req['consumptions'])} times")
    return found


def build_report(
    events: Iterable[dict[str, Any]],
    *,
    origin: str,
    start: datetime | None = None,
    end: datetime | None = None,
    verification: VerifyResult | None = None,
    checkpoints: Sequence[StoredCheckpoint] = (),
) -> dict[str, Any]:
    requests: dict[str, dict[str, Any]] = {}
    count = 0
    for event in events:
        count += 1
        _fold(requests, event)

    def in_period(value: Any) -> bool:
        moment = _time(value)
        return moment is not None and (start is None or moment >= start) and (end is None or moment <= end)

    period = [r for r in requests.values() if in_period(r["submitted_at"])]
    executed = [r for r in requests.values() if r["consumptions"] and in_period(r["consumptions"][0]["at"])]
    executed.sort(key=lambda r: r["consumptions"][0]["at"])
    anomalies = [a for r in executed for a in _anomalies(r)]
    flagged = Counter(a["check"] for a in anomalies)
    statuses = Counter(r["status"] for r in period)
    by_action: dict[tuple[str, str], Counter[str]] = {}
    for r in period:
        key = (r["action"] or "?", r["tier"] or ("policy allow" if r["decision"] == "allow" else "-"))
        counter = by_action.setdefault(key, Counter())
        counter["requests"] += 1
        counter[r["status"]] += 1
    for r in executed:
        key = (r["action"] or "?", r["tier"] or ("policy allow" if r["decision"] == "allow" else "-"))
        by_action.setdefault(key, Counter())["executed"] += 1
    newest = checkpoints[-1] if checkpoints else None
    return {
        "origin": origin,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "period": {"start": start.isoformat() if start else None, "end": end.isoformat() if end else None},
        "ledger": {
            "events": count,
            "verified": verification.ok if verification else None,
            "summary": verification.summary() if verification else "not verified",
            "root": verification.root if verification else None,
            "covered": verification.covered if verification else None,
            "keys": verification.keys_used if verification else [],
            "newest_checkpoint": {
                "size": newest.size,
                "root_hash": newest.root_hash,
                "key": newest.key_name,
                "at": newest.created_at.isoformat(),
            }
            if newest
            else None,
        },
        "totals": {
            "requests": len(period),
            "executed": len(executed),
            "succeeded": statuses["succeeded"],
            "failed": statuses["failed"],
            "denied": statuses["denied"],
            "expired": statuses["expired"],
            "cancelled": statuses["cancelled"],
            "pending": statuses["pending"],
        },
        "by_action": [
            {
                "action": action,
                "tier": tier,
                "requests": c["requests"],
                "executed": c["executed"],
                "succeeded": c["succeeded"],
                "failed": c["failed"],
                "denied": c["denied"],
                "expired": c["expired"],
            }
            for (action, tier), c in sorted(by_action.items())
        ],
        "executions": [_execution(r) for r in executed],
        "checks": [
            {
                "code": code,
                "title": title,
                "description": text,
                "checked": len(executed),
                "violations": flagged[code],
            }
            for code, title, text in CHECKS
        ],
        "anomalies": anomalies,
        "controls": [{"framework": f, "control": c, "title": t, "evidence": e} for f, c, t, e in CONTROLS],
    }


def _execution(r: dict[str, Any]) -> dict[str, Any]:
    approved = r["approved"]
    consumed = r["consumptions"][0]
    groups = {rev["reviewer"]: rev["groups"] for rev in r["reviews"] if rev["decision"] == "approve"}
    signed = (
        {
            rev["reviewer"]: rev["passkey"]
            for rev in r["reviews"]
            if rev["decision"] == "approve"
            and rev.get("passkey")
            and rev["params_digest"] == r["approved"]["params_digest"]
        }
        if r["approved"]
        else {}
    )
    approvers = [
        {
            "reviewer": a.get("reviewer"),
            "requirement": a.get("requirement"),
            "groups": groups.get(a.get("reviewer"), []),
            "passkey": signed.get(a.get("reviewer")),
        }
        for a in (approved["approvers"] if approved else [])
    ]
    approved_digest = approved["params_digest"] if approved else r["submitted_digest"]
    return {
        "request_id": r["id"],
        "action": r["action"],
        "resource": r["resource"],
        "requester": r["requester"],
        "on_behalf_of": r["on_behalf_of"],
        "justification": r["justification"],
        "submitted_at": r["submitted_at"],
        "decision": r["decision"],
        "rules": r["rules"],
        "policy_revision": r["policy_revision"],
        "tier": r["tier"],
        "approvers": approvers,
        "edited": bool(r["edits"]),
        "approved_digest": approved_digest,
        "executed_digest": consumed["params_digest"],
        "digests_match": approved_digest == consumed["params_digest"],
        "executor": consumed["executor"],
        "executed_at": consumed["at"],
        "outcome": r["outcome"]["status"] if r["outcome"] else "running",
        "first_seq": r["first_seq"],
    }


def render_html(evidence: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(
        loader=PackageLoader("keyturn.ledger", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("report.html.j2").render(r=evidence)
