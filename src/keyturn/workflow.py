"""The request lifecycle: a pure state machine that enforces the guarantees of DESIGN §1.

Every function takes the current `RequestRecord` and an input, and returns a `Transition` (the new record
plus the ledger events that describe it) or raises a `WorkflowError`. Nothing here does I/O, reads a clock
or draws random numbers: the caller passes `now` and new ids, and persists a transition in one database
transaction guarded by `record.version`, so a transition is applied exactly once or not at all.

The guarantees live here and only here:

1. a requester never reviews its own request; an agent never reviews anything;
2. the on-behalf-of human never counts toward quorum;
3. a reviewer must be in a route group at the moment of review; each human counts once, for one requirement;
4. a deny from a qualified reviewer ends the request, and carries a reason;
5. only editable params may change, the edit is re-evaluated by policy and refused if denied or if it would
   need approvers the route does not have; the grant binds the edited params and the ledger keeps both;
6. nothing is decided after expiry;
7. a grant is consumed at most once, and only with the approved params;
8. (unknown actions follow `defaults.decision`: the policy engine's job);
9. events carry redacted payloads only, with digests keyed by the `Redactor` the caller passes (the
   server's, holding its redaction key; `UNKEYED` is the plain-SHA-256 default for tests and tools);
10. a `step_up` route counts an approval only from a reviewer who proved presence for it: a passkey assertion
    or an identity-provider login fresher than the route's `step_up_max_age` (never a chat click or a token).

`review_refusal` is the one answer to "may this principal review this request now, and if not why": the
review transition and the review queue both ask it, so what a surface offers is what the workflow accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyturn import passkeys
from keyturn.model import (
    ActionRequest,
    AuthMethod,
    Decision,
    Event,
    EventType,
    GrantRecord,
    PasskeyAssertion,
    Principal,
    PrincipalKind,
    RequestRecord,
    Requirement,
    Review,
    ReviewDecision,
    Route,
    Status,
    Verdict,
    fold_principal_id,
    params_digest,
    same_identity,
)
from keyturn.redact import UNKEYED, Redactor, mask

# --- errors -------------------------------------------------------------------------------------------


class WorkflowError(Exception):
    """A transition the lifecycle refuses. `code` is stable and machine-readable."""

    code = "workflow_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ReviewRefused(WorkflowError):
    code = "review_refused"


class SelfReview(ReviewRefused):
    code = "self_review"


class AgentCannotReview(ReviewRefused):
    code = "agent_cannot_review"


class OnBehalfOfCannotApprove(ReviewRefused):
    code = "on_behalf_of_cannot_approve"


class NotQualified(ReviewRefused):
    code = "not_qualified"


class StepUpRequired(ReviewRefused):
    code = "step_up_required"


class SignatureRequired(ReviewRefused):
    code = "signature_required"


class AlreadyReviewed(ReviewRefused):
    code = "already_reviewed"


class RequirementAlreadyMet(ReviewRefused):
    code = "requirement_already_met"


class ReasonRequired(ReviewRefused):
    code = "reason_required"


class EditRefused(ReviewRefused):
    code = "edit_refused"


class SignatureMismatch(ReviewRefused):
    code = "signature_mismatch"


class NotPending(WorkflowError):
    code = "not_pending"


class RequestExpired(WorkflowError):
    code = "request_expired"


class NotRequester(WorkflowError):
    code = "not_requester"


class GrantRefused(WorkflowError):
    code = "grant_refused"


class GrantAlreadyConsumed(GrantRefused):
    code = "grant_already_consumed"


class GrantMismatch(GrantRefused):
    code = "grant_mismatch"


class GrantExpired(GrantRefused):
    code = "grant_expired"


class GrantNotHolder(GrantRefused):
    """The grant is bound to another principal. `refusal` is the transition that ledgers the attempt: the
    caller applies it (the request's state does not change, only its version) and then refuses."""

    code = "grant_not_holder"

    def __init__(self, message: str, refusal: Transition) -> None:
        super().__init__(message)
        self.refusal = refusal


class ResultRefused(WorkflowError):
    code = "result_refused"


class NotExecutor(ResultRefused):
    """Who may report a result is a question of identity, not of the request's state."""

    code = "not_executor"


class NothingToDo(WorkflowError):
    """A timer fired for a request that no longer needs it (already decided, not yet due)."""

    code = "nothing_to_do"


# --- values -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    record: RequestRecord
    events: tuple[Event, ...]


@dataclass(frozen=True)
class GrantPresentation:
    """What an executor presents: the verified claims of a signed grant token.

    `resource` is the resource as the token shows it, credentials masked (`keyturn.redact.mask`);
    `resource_digest` is the keyed digest of the whole resource, which is what binds it. A token without a
    digest binds only a resource that has nothing to mask.
    """

    grant_id: str
    request_id: str
    action: str
    resource: str
    params_digest: str
    resource_digest: str | None = None


Reevaluate = Callable[[ActionRequest], Verdict]


# --- submit -------------------------------------------------------------------------------------------


def submit(
    request_id: str,
    request: ActionRequest,
    verdict: Verdict,
    now: datetime,
    grant_id: str,
    *,
    redactor: Redactor = UNKEYED,
) -> Transition:
    """Record a new request and what policy said about it."""
    base = RequestRecord(
        id=request_id,
        request=request,
        status=Status.PENDING,
        verdict=verdict,
        created_at=now,
        updated_at=now,
    )
    submitted = _event(
        EventType.SUBMITTED,
        request.requester.id,
        base,
        now,
        _submitted_payload(base, redactor),
        redactor,
        paths=_redaction_paths(base),  # params.x, context.y, justification: the payload's own keys
    )
    if verdict.decision is Decision.ALLOW:
        record = _with_grant(
            base.model_copy(update={"status": Status.ALLOWED, "approved_params": request.params}),
            grant_id,
            now,
        )
        allowed = _event(
            EventType.ALLOWED, "policy", record, now, {"rules": list(verdict.matched_rule_names)}, redactor
        )
        return Transition(record, (submitted, allowed, _grant_issued(record, now, redactor)))
    if verdict.decision is Decision.DENY:
        record = base.model_copy(update={"status": Status.DENIED})
        payload = {"reason": verdict.reason, "by": "policy", "rules": list(verdict.matched_rule_names)}
        return Transition(
            record, (submitted, _event(EventType.DENIED, "policy", record, now, payload, redactor))
        )
    route = _require_route(verdict)
    record = base.model_copy(update={"expires_at": now + route.ttl})
    pending = _event(
        EventType.PENDING,
        "policy",
        record,
        now,
        {
            "expires_at": _iso(now + route.ttl),
            "requirements": [r.model_dump(mode="json") for r in route.requirements],
            "notify": list(route.notify),
        },
        redactor,
    )
    return Transition(record, (submitted, pending))


# --- review -------------------------------------------------------------------------------------------


def review(
    record: RequestRecord,
    reviewer: Principal,
    decision: ReviewDecision,
    comment: str,
    now: datetime,
    *,
    edited_params: Mapping[str, Any] | None = None,
    reevaluate: Reevaluate | None = None,
    grant_id: str,
    redactor: Redactor = UNKEYED,
) -> Transition:
    """Apply one human's decision. Raises a `ReviewRefused` for any review the guarantees forbid."""
    refusal = review_refusal(record, reviewer, now, decision)
    if refusal is not None:
        raise refusal
    route = _require_route(record.verdict)

    signed = reviewer.authn.passkey if reviewer.authn is not None else None

    if decision is ReviewDecision.DENY:
        if edited_params is not None:
            raise EditRefused("params can only be edited with an approval")
        _check_signature(record, reviewer, decision, None, signed, redactor)
        if not comment.strip():
            raise ReasonRequired("a deny needs a reason in the comment")
        entry = Review(
            reviewer=reviewer.id,
            reviewer_groups=reviewer.groups,
            decision=decision,
            comment=comment,
            at=now,
        )
        record = _bump(record, now, status=Status.DENIED, reviews=(*record.reviews, entry))
        return Transition(
            record,
            (
                _reviewed(record, entry, now, redactor, reviewer),
                _event(
                    EventType.DENIED,
                    reviewer.id,
                    record,
                    now,
                    {"reason": comment, "by": reviewer.id},
                    redactor,
                ),
            ),
        )

    events: list[Event] = []
    current = effective_params(record)
    if edited_params is not None and dict(edited_params) != current:
        new_params = dict(edited_params)
        _check_edit(record, route, current, new_params, reevaluate)
        events.append(
            _event(
                EventType.PARAMS_EDITED,
                reviewer.id,
                record,
                now,
                {
                    "before": current,
                    "after": new_params,
                    "before_digest": ledger_digest(current, redactor),
                    "after_digest": ledger_digest(new_params, redactor),
                },
                redactor,
                # redacted once, here: the route's params.x paths name before.x and after.x
                paths=[
                    f"{side}.{p.removeprefix('params.')}"
                    for p in record.verdict.redactions
                    if p.startswith("params.")
                    for side in ("before", "after")
                ],
            )
        )
        current = new_params
    digest = params_digest(current)
    _check_signature(record, reviewer, decision, current, signed, redactor)
    if _has_approved(record, reviewer, digest):
        raise AlreadyReviewed(f"{reviewer.id} has already approved these params")
    entry = Review(
        reviewer=reviewer.id,
        reviewer_groups=reviewer.groups,
        decision=decision,
        comment=comment,
        params=current if edited_params is not None else None,
        params_digest=digest,
        at=now,
    )
    before = _assignment(route.requirements, _approvals(record.reviews, digest))
    after = _assignment(route.requirements, _approvals((*record.reviews, entry), digest))
    if len(after) <= len(before) and not events:
        still_needed = ", ".join(outstanding(record)) or "nothing"
        raise RequirementAlreadyMet(
            f"every requirement {reviewer.id} qualifies for is already met; still needed: {still_needed}"
        )
    reviews = (*record.reviews, entry)
    record = _bump(record, now, reviews=reviews)
    events.insert(0, _reviewed(record, entry, now, redactor, reviewer, current))
    if len(after) < _slots(route.requirements):
        return Transition(record, tuple(events))
    record = _with_grant(
        record.model_copy(update={"status": Status.APPROVED, "approved_params": current}), grant_id, now
    )
    approvers = sorted(after)
    events.append(
        _event(
            EventType.APPROVED,
            reviewer.id,
            record,
            now,
            {
                "approvers": [
                    {"reviewer": who, "requirement": route.requirements[after[who]].describe()}
                    for who in approvers
                ],
                "params_digest": ledger_digest(current, redactor),
                "edited": current != record.request.params,
            },
            redactor,
        )
    )
    events.append(_grant_issued(record, now, redactor))
    return Transition(record, tuple(events))


def review_refusal(
    record: RequestRecord,
    reviewer: Principal,
    now: datetime,
    decision: ReviewDecision,
    *,
    check_presence: bool = True,
) -> WorkflowError | None:
    """Why `reviewer` may not make `decision` on `record` at `now`, or None when they may.

    What the body of a review can still change (a deny's reason, an edit) is checked by `review` itself.
    `check_presence=False` leaves out the step-up proof, which a surface can still ask the reviewer for.
    """
    try:
        _require_pending(record, now)
        route = _require_route(record.verdict)
    except WorkflowError as refusal:
        return refusal
    requester = record.request.requester
    if reviewer.kind is not PrincipalKind.HUMAN:
        return AgentCannotReview(f"{reviewer.id} is an agent; only humans review requests")
    if same_identity(reviewer.id, requester.id):
        return SelfReview(f"{reviewer.id} submitted this request and cannot review it")
    route_groups = {g for req in route.requirements for g in req.groups}
    if not reviewer.groups & route_groups:
        return NotQualified(
            f"{reviewer.id} is not in any group this request needs ({', '.join(sorted(route_groups))})"
        )
    if decision is ReviewDecision.APPROVE:
        # Only an approval needs proof of presence: a deny is the fail-safe direction, so a chat's Deny
        # button works on a step-up route while its Approve button leads to the console (DESIGN §3).
        if check_presence and route.step_up and not _present(reviewer, now, route.step_up_max_age):
            return StepUpRequired(
                f"approving this request needs a fresh login or a passkey (within "
                f"{_minutes(route.step_up_max_age)}); {reviewer.id} authenticated by "
                f"{reviewer.authn.method.value if reviewer.authn else 'an unknown method'}"
            )
        if (
            check_presence
            and route.signature == "passkey"
            and (reviewer.authn is None or reviewer.authn.passkey is None)
        ):
            return SignatureRequired(
                "approving this request needs a passkey signature over the decision (signature: passkey)"
            )
        if same_identity(reviewer.id, record.request.on_behalf_of):
            return OnBehalfOfCannotApprove(
                f"{reviewer.id} is the human this agent acts for and cannot approve its request"
            )
        if _has_approved(record, reviewer, params_digest(effective_params(record))):
            return AlreadyReviewed(f"{reviewer.id} has already approved these params")
    return None


def may_review(record: RequestRecord, reviewer: Principal, now: datetime) -> bool:
    """Whether `record` belongs in `reviewer`'s review queue: they have not approved its current params yet
    and some decision is open to them — a deny for the on-behalf-of human, an approval that a step-up
    route will ask a fresh login or a passkey for."""
    if _has_approved(record, reviewer, params_digest(effective_params(record))):
        return False
    return any(review_refusal(record, reviewer, now, d, check_presence=False) is None for d in ReviewDecision)


# Presence proofs a step-up route accepts; tokens and chat clicks prove only that a credential was used.
_PRESENCE_METHODS = frozenset({AuthMethod.PASSKEY, AuthMethod.OIDC, AuthMethod.CONSOLE})


def _present(reviewer: Principal, now: datetime, max_age: timedelta) -> bool:
    authn = reviewer.authn
    if authn is None or authn.method not in _PRESENCE_METHODS or authn.at is None:
        return False
    if authn.method is AuthMethod.PASSKEY and authn.passkey is None:
        return False  # a passkey counts with its assertion, which `_check_signature` binds to this review
    # a clock a little ahead of ours is tolerated; a proof from the future beyond that is not
    return timedelta(seconds=-60) <= now - authn.at <= max_age


def _minutes(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}" if minutes else f"{int(span.total_seconds())} s"


def _has_approved(record: RequestRecord, reviewer: Principal, digest: str) -> bool:
    return any(
        r.decision is ReviewDecision.APPROVE
        and same_identity(r.reviewer, reviewer.id)
        and r.params_digest == digest
        for r in record.reviews
    )


def _check_edit(
    record: RequestRecord,
    route: Route,
    current: dict[str, Any],
    new_params: dict[str, Any],
    reevaluate: Reevaluate | None,
) -> None:
    editable = [_split(p.removeprefix("params.")) for p in route.editable if p.startswith("params.")]
    for path in _changed_paths(current, new_params):
        if not any(path[: len(e)] == e for e in editable):
            raise EditRefused(f"params.{'.'.join(path)} is not editable for this request")
    if reevaluate is None:
        raise EditRefused("edits need policy re-evaluation, which is not available")
    verdict = reevaluate(record.request.with_params(new_params))
    if verdict.decision is Decision.DENY:
        raise EditRefused(f"policy denies the edited request: {verdict.reason}")
    if verdict.decision is Decision.REVIEW:
        edited_route = _require_route(verdict)
        needed = set(edited_route.requirements) - set(route.requirements)
        if needed:
            raise EditRefused(
                "the edited request would need other approvers ("
                + ", ".join(r.describe() for r in sorted(needed, key=Requirement.describe))
                + "); submit it as a new request"
            )
        if edited_route.step_up and not route.step_up:
            raise EditRefused("the edited request would need a step-up approval; submit it as a new request")
        # The record keeps the route it was submitted with, so an edit that policy would put on a tier with
        # `signature: passkey` would otherwise be approved unsigned: refused, like a step-up it would need.
        if edited_route.signature == "passkey" and route.signature != "passkey":
            raise EditRefused(
                "the edited request would need passkey-signed approvals (signature: passkey); "
                "submit it as a new request"
            )
    # The request keeps the redactions it was submitted with: an edit that policy would redact differently
    # could show a value in clear that the edited request must hide.
    hidden = sorted(set(verdict.redactions) - set(record.verdict.redactions))
    if hidden:
        raise EditRefused(
            f"the edited request would also redact {', '.join(hidden)}; submit it as a new request"
        )


def _changed_paths(before: Any, after: Any, here: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(before, dict) and isinstance(after, dict):
        paths: list[tuple[str, ...]] = []
        for key in sorted(set(before) | set(after)):
            if key not in before or key not in after:
                paths.append((*here, key))
            else:
                paths.extend(_changed_paths(before[key], after[key], (*here, key)))
        return paths
    return [] if before == after and type(before) is type(after) else [here]


# --- quorum -------------------------------------------------------------------------------------------


def _approvals(reviews: Sequence[Review], digest: str) -> list[Review]:
    """Approvals that still count: those given to the params that would run now."""
    return [r for r in reviews if r.decision is ReviewDecision.APPROVE and r.params_digest == digest]


def _slots(requirements: Sequence[Requirement]) -> int:
    return sum(r.count for r in requirements)


def _assignment(requirements: Sequence[Requirement], approvals: Sequence[Review]) -> dict[str, int]:
    """A maximum assignment of approvers to requirement slots (each human fills one slot at most).

    Bipartite matching by augmenting paths, so that the order in which people approve never matters:
    someone in both `sre` and `security` is moved to whichever requirement lets the others count.
    Groups are the reviewer's groups at the moment of review.
    """
    slots = [i for i, req in enumerate(requirements) for _ in range(req.count)]
    slot_owner: dict[int, str] = {}
    # Keyed by the canonical id: one human counts once, whatever spelling a stored review has.
    groups: dict[str, frozenset[str]] = {}
    for approval in approvals:
        who = fold_principal_id(approval.reviewer)
        groups[who] = groups.get(who, frozenset()) | approval.reviewer_groups

    def fits(who: str, slot: int) -> bool:
        return bool(groups[who] & set(requirements[slots[slot]].groups))

    def place(who: str, seen: set[int]) -> bool:
        for slot in range(len(slots)):
            if slot in seen or not fits(who, slot):
                continue
            seen.add(slot)
            if slot not in slot_owner or place(slot_owner[slot], seen):
                slot_owner[slot] = who
                return True
        return False

    for who in groups:
        place(who, set())
    return {who: slots[slot] for slot, who in slot_owner.items()}


def outstanding(record: RequestRecord) -> list[str]:
    """Human-readable requirements still unmet, e.g. ``["1 from security"]``."""
    route = record.verdict.route
    if route is None or record.status is not Status.PENDING:
        return []
    filled = _assignment(
        route.requirements, _approvals(record.reviews, params_digest(effective_params(record)))
    )
    counts = [0] * len(route.requirements)
    for index in filled.values():
        counts[index] += 1
    return [
        Requirement(groups=req.groups, count=req.count - counts[i]).describe()
        for i, req in enumerate(route.requirements)
        if counts[i] < req.count
    ]


def effective_params(record: RequestRecord) -> dict[str, Any]:
    """The params that would run if the request were approved now: the latest edit, else the original."""
    if record.approved_params is not None:
        return record.approved_params
    for entry in reversed(record.reviews):
        if entry.params is not None:
            return entry.params
    return record.request.params


# --- cancel, expire, escalate -------------------------------------------------------------------------


def cancel(
    record: RequestRecord,
    actor: Principal,
    now: datetime,
    reason: str = "",
    *,
    redactor: Redactor = UNKEYED,
) -> Transition:
    if not same_identity(actor.id, record.request.requester.id):
        raise NotRequester(f"only the requester ({record.request.requester.id}) can cancel this request")
    _require_pending(record, now)
    record = _bump(record, now, status=Status.CANCELLED)
    cancelled = _event(EventType.CANCELLED, actor.id, record, now, {"reason": reason}, redactor)
    return Transition(record, (cancelled,))


def expire(record: RequestRecord, now: datetime, *, redactor: Redactor = UNKEYED) -> Transition:
    """Fail closed: a pending request past its deadline, or an unused grant past its expiry, ends expired."""
    if record.status is Status.PENDING and record.expires_at is not None and now >= record.expires_at:
        record = _bump(record, now, status=Status.EXPIRED)
        payload = {"expired_at": _iso(now), "still_needed": outstanding_before_expiry(record)}
        return Transition(record, (_event(EventType.EXPIRED, "system", record, now, payload, redactor),))
    grant = record.grant
    if record.status.runnable and grant is not None and grant.consumed_at is None and now >= grant.expires_at:
        record = _bump(record, now, status=Status.EXPIRED)
        payload = {"grant_id": grant.id, "expired_at": _iso(now)}
        expired = _event(EventType.GRANT_EXPIRED, "system", record, now, payload, redactor)
        return Transition(record, (expired,))
    raise NothingToDo(f"request {record.id} is not due to expire")


def outstanding_before_expiry(record: RequestRecord) -> list[str]:
    return outstanding(record.model_copy(update={"status": Status.PENDING}))


def next_deadline(record: RequestRecord) -> datetime | None:
    """When a timer must next look at this request (expiry, grant expiry or escalation), if ever."""
    if record.status is Status.PENDING:
        deadlines = [record.expires_at] if record.expires_at else []
        route = record.verdict.route
        if route is not None and record.escalation_level < len(route.escalate):
            deadlines.append(record.created_at + route.escalate[record.escalation_level].after)
        return min(deadlines) if deadlines else None
    if record.status.runnable and record.grant is not None and record.grant.consumed_at is None:
        return record.grant.expires_at
    return None


def escalate(record: RequestRecord, now: datetime, *, redactor: Redactor = UNKEYED) -> Transition:
    """Move to the next escalation step when it is due. The request stays pending."""
    route = record.verdict.route
    if record.status is not Status.PENDING or route is None or record.escalation_level >= len(route.escalate):
        raise NothingToDo(f"request {record.id} has no escalation due")
    if record.expires_at is not None and now >= record.expires_at:
        raise NothingToDo(f"request {record.id} is past its deadline; it expires instead")
    step = route.escalate[record.escalation_level]
    if now < record.created_at + step.after:
        raise NothingToDo(f"request {record.id} escalates at {_iso(record.created_at + step.after)}")
    record = _bump(record, now, escalation_level=record.escalation_level + 1)
    payload = {
        "level": record.escalation_level,
        "notify": list(step.notify),
        "still_needed": outstanding(record),
    }
    return Transition(record, (_event(EventType.ESCALATED, "system", record, now, payload, redactor),))


def due_transition(record: RequestRecord, now: datetime, *, redactor: Redactor = UNKEYED) -> Transition:
    """The timer transition due now: expiry wins over escalation."""
    try:
        return expire(record, now, redactor=redactor)
    except NothingToDo:
        return escalate(record, now, redactor=redactor)


# --- grants -------------------------------------------------------------------------------------------


def consume_grant(
    record: RequestRecord,
    presented: GrantPresentation,
    executor: Principal,
    now: datetime,
    *,
    redactor: Redactor = UNKEYED,
) -> Transition:
    """Flip an allowed/approved request to executing. The store applies it with a conditional update.

    A grant binds its holder: the requester, or the executors the policy names instead (principal ids or
    `group:NAME`). Anyone else presenting it is refused with `GrantNotHolder`, whose refusal is ledgered.
    """
    grant = record.grant
    if grant is None or grant.id != presented.grant_id or presented.request_id != record.id:
        raise GrantMismatch("this grant does not belong to this request")
    if not may_consume(record, executor):
        named = record.verdict.grant_executors
        holders = ", ".join(named) if named else f"its requester {record.request.requester.id}"
        reason = f"grant {grant.id} is bound to {holders}; {executor.id} may not consume it"
        payload = {
            "grant_id": grant.id,
            "presented_by": executor.id,
            "presented_by_groups": sorted(executor.groups),
            "bound_to": list(named) or [record.request.requester.id],
            "reason": reason,
        }
        refused = record.model_copy(update={"version": record.version + 1})  # nothing else changes
        event = _event(EventType.GRANT_REFUSED, executor.id, refused, now, payload, redactor)
        raise GrantNotHolder(reason, Transition(refused, (event,)))
    if grant.consumed_at is not None:
        raise GrantAlreadyConsumed(f"grant {grant.id} was already consumed")
    if not record.status.runnable:
        raise GrantRefused(f"request {record.id} is {record.status.value}; nothing may run")
    if now >= grant.expires_at:
        raise GrantExpired(f"grant {grant.id} expired at {_iso(grant.expires_at)}")
    approved = record.approved_params if record.approved_params is not None else record.request.params
    resource = record.request.resource
    if presented.resource_digest is None:
        resource_bound = presented.resource == resource and mask(resource) == resource
    else:
        resource_bound = presented.resource == mask(resource) and redactor.matches(
            presented.resource_digest, resource
        )
    if (
        presented.action != record.request.action
        or not resource_bound
        or presented.params_digest != grant.params_digest
        or grant.params_digest != params_digest(approved)
    ):
        raise GrantMismatch("the grant's action, resource or params digest does not match what was approved")
    return _consumed(record, grant, executor, now, redactor)


def submit_and_consume(
    request_id: str,
    request: ActionRequest,
    verdict: Verdict,
    now: datetime,
    grant_id: str,
    *,
    redactor: Redactor = UNKEYED,
) -> Transition:
    """`submit`, and when policy allows the action and the requester holds the grant, `consume_grant` by
    the requester in the same transition: one durable write for an allowed action the caller runs now.

    The events are both transitions' (submitted, allowed, grant issued, grant consumed), so the ledger
    tells the same story as the two-step path. Any other verdict, or a grant bound to other executors,
    gives exactly `submit`'s transition: the grant is then consumed (or waited for) as usual.
    """
    submitted = submit(request_id, request, verdict, now, grant_id, redactor=redactor)
    record, grant = submitted.record, submitted.record.grant
    if record.status is not Status.ALLOWED or grant is None or not may_consume(record, request.requester):
        return submitted
    consumed = _consumed(record, grant, request.requester, now, redactor)
    return Transition(consumed.record, submitted.events + consumed.events)


def _consumed(
    record: RequestRecord, grant: GrantRecord, executor: Principal, now: datetime, redactor: Redactor
) -> Transition:
    """The consumption itself, once every check of `consume_grant` passed."""
    record = _bump(
        record,
        now,
        status=Status.EXECUTING,
        executor=executor.id,
        grant=grant.model_copy(update={"consumed_at": now}),
    )
    payload = {
        "grant_id": grant.id,
        "params_digest": ledger_digest(effective_params(record), redactor),
        "executor": executor.id,
    }
    consumed = _event(EventType.GRANT_CONSUMED, executor.id, record, now, payload, redactor)
    return Transition(record, (consumed,))


def may_consume(record: RequestRecord, executor: Principal) -> bool:
    """Whether `executor` is a holder of the request's grant (see `consume_grant`)."""
    named = record.verdict.grant_executors
    if not named:
        return same_identity(executor.id, record.request.requester.id)
    for entry in named:
        if entry.startswith("group:"):
            if entry.removeprefix("group:") in executor.groups:
                return True
        elif same_identity(entry, executor.id):
            return True
    return False


def report_result(
    record: RequestRecord,
    actor: Principal,
    succeeded: bool,
    now: datetime,
    *,
    output_digest: str | None = None,
    detail: str = "",
    redactor: Redactor = UNKEYED,
) -> Transition:
    if record.status is Status.EXECUTING and not (
        same_identity(actor.id, record.executor) or same_identity(actor.id, record.request.requester.id)
    ):
        raise NotExecutor(f"only the requester or the executor can report the result of {record.id}")
    if record.status is not Status.EXECUTING:
        raise ResultRefused(f"request {record.id} is {record.status.value}, not executing")
    status = Status.SUCCEEDED if succeeded else Status.FAILED
    result = {"status": status.value, "output_digest": output_digest, "detail": detail}
    record = _bump(record, now, status=status, result=result)
    event_type = EventType.SUCCEEDED if succeeded else EventType.FAILED
    return Transition(record, (_event(event_type, actor.id, record, now, result, redactor),))


# --- invariants (checked by the property tests after every step) --------------------------------------


def invariant_violations(record: RequestRecord) -> list[str]:
    problems: list[str] = []
    requester = record.request.requester.id
    on_behalf_of = record.request.on_behalf_of
    for entry in record.reviews:
        if same_identity(entry.reviewer, requester):
            problems.append("the requester reviewed its own request")
        if entry.decision is ReviewDecision.APPROVE and same_identity(entry.reviewer, on_behalf_of):
            problems.append("the on-behalf-of human approved")
        if entry.decision is ReviewDecision.DENY and not entry.comment.strip():
            problems.append("a deny without reason")
        if record.expires_at is not None and entry.at >= record.expires_at:
            problems.append("a review after expiry")
    if len({(fold_principal_id(r.reviewer), r.params_digest) for r in record.reviews}) != len(record.reviews):
        problems.append("one human reviewed the same params twice")
    if record.status is Status.APPROVED or (
        record.status in (Status.EXECUTING, Status.SUCCEEDED, Status.FAILED)
        and record.verdict.decision is Decision.REVIEW
    ):
        route = _require_route(record.verdict)
        digest = params_digest(record.approved_params or {})
        if len(_assignment(route.requirements, _approvals(record.reviews, digest))) < _slots(
            route.requirements
        ):
            problems.append("approved without quorum")
    ran = record.status in (Status.EXECUTING, Status.SUCCEEDED, Status.FAILED)
    if ran and (record.grant is None or record.grant.consumed_at is None):
        problems.append("executing without a consumed grant")
    grant = record.grant
    if grant is not None and grant.params_digest != params_digest(record.approved_params or {}):
        problems.append("grant bound to other params than approved")
    if any(r.decision is ReviewDecision.DENY for r in record.reviews) and record.status is not Status.DENIED:
        problems.append("a qualified deny did not end the request")
    return problems


# --- helpers ------------------------------------------------------------------------------------------


def _require_pending(record: RequestRecord, now: datetime) -> None:
    if record.status is not Status.PENDING:
        raise NotPending(f"request {record.id} is {record.status.value}; it can no longer be changed")
    if record.expires_at is not None and now >= record.expires_at:
        raise RequestExpired(f"request {record.id} expired at {_iso(record.expires_at)}")


def _require_route(verdict: Verdict) -> Route:
    if verdict.route is None or not verdict.route.requirements:
        # A review verdict without approvers could never be approved: refuse to treat it as anything else.
        raise WorkflowError("a review verdict must carry a route with at least one requirement")
    return verdict.route


def _bump(record: RequestRecord, now: datetime, **changes: Any) -> RequestRecord:
    return record.model_copy(update={**changes, "updated_at": now, "version": record.version + 1})


def _with_grant(record: RequestRecord, grant_id: str, now: datetime) -> RequestRecord:
    ttl = record.verdict.route.grant_ttl if record.verdict.route else record.verdict.grant_ttl
    grant = GrantRecord(
        id=grant_id,
        request_id=record.id,
        params_digest=params_digest(record.approved_params or {}),
        issued_at=now,
        expires_at=now + ttl,
    )
    return _bump(record, now, grant=grant)


def _split(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split(".") if p)


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _redaction_paths(record: RequestRecord) -> tuple[str, ...]:
    return record.verdict.redactions


def _event(
    kind: EventType,
    actor: str,
    record: RequestRecord,
    now: datetime,
    payload: Mapping[str, Any],
    redactor: Redactor,
    *,
    paths: Sequence[str] = (),
) -> Event:
    """The one place a payload is redacted: once, on the raw values, so a named path's marker carries the
    digest of the value (as the API view's does), never the digest of a marker."""
    return Event(
        type=kind,
        actor=actor,
        request_id=record.id,
        payload=redactor.document(payload, paths),
        ts=now,
    )


def ledger_digest(params: dict[str, Any], redactor: Redactor) -> str:
    """The digest of a params document as the ledger and a passkey statement carry it: keyed under the
    server's redaction key (guarantee 9). The plain SHA-256 a grant binds (`params_digest`) stays in the
    record and the grant token — whose holders know the params — because a ledger holder sees the params
    with their secrets redacted, and a plain digest of the whole document would confirm a guess of a
    redacted low-entropy value. With the key, an auditor recomputes it (`keyturn ledger check-value`)."""
    return redactor.digest(params)


def _submitted_payload(record: RequestRecord, redactor: Redactor) -> dict[str, Any]:
    request = record.request
    verdict = record.verdict
    route = verdict.route
    return {
        "action": request.action,
        "resource": request.resource,
        "requester": request.requester.id,
        "requester_kind": request.requester.kind.value,
        "on_behalf_of": request.on_behalf_of,
        "on_behalf_of_verified": request.on_behalf_of_verified,
        "justification": request.justification,
        "params": request.params,
        "context": request.context,
        "params_digest": ledger_digest(request.params, redactor),
        "idempotency_key": request.idempotency_key,
        "verdict": {
            "decision": verdict.decision.value,
            "reason": verdict.reason,
            "rules": list(verdict.matched_rule_names),
            "policy_revision": verdict.policy_revision,
            "tier": route.tier if route else None,
            "requirements": [r.model_dump(mode="json") for r in route.requirements] if route else [],
        },
    }


def review_statement(
    record: RequestRecord,
    reviewer_id: str,
    decision: ReviewDecision,
    approved: dict[str, Any] | None,
    redactor: Redactor,
) -> dict[str, Any]:
    """The statement a passkey signs for a review: what `review` checks the assertion against and the ledger
    keeps. `approved`: the params an approval approves (edits merged); None for a deny."""
    return passkeys.statement(
        request_id=record.id,
        action=record.request.action,
        resource=record.request.resource,
        params_digest=None if approved is None else ledger_digest(approved, redactor),
        decision=decision.value,
        reviewer=reviewer_id,
    )


def _check_signature(
    record: RequestRecord,
    reviewer: Principal,
    decision: ReviewDecision,
    approved: dict[str, Any] | None,
    signed: PasskeyAssertion | None,
    redactor: Redactor,
) -> None:
    """A passkey review counts only when its signature is over this very decision (the signature itself
    was verified by the caller against the registered key; `keyturn ledger verify` checks it again)."""
    if signed is None:
        return
    document = review_statement(record, reviewer.id, decision, approved, redactor)
    if not passkeys.binds(signed, document):
        raise SignatureMismatch("the passkey signed a different decision than the one being recorded")


def _reviewed(
    record: RequestRecord,
    entry: Review,
    now: datetime,
    redactor: Redactor,
    reviewer: Principal | None = None,
    approved: dict[str, Any] | None = None,
) -> Event:
    """`approved`: the params an approval approved (None for a deny, which approves nothing)."""
    payload: dict[str, Any] = {
        "reviewer": entry.reviewer,
        "reviewer_groups": sorted(entry.reviewer_groups),
        "decision": entry.decision.value,
        "comment": entry.comment,
        "params_digest": None if approved is None else ledger_digest(approved, redactor),
    }
    signed = reviewer.authn.passkey if reviewer is not None and reviewer.authn is not None else None
    if signed is not None:
        # The ledger keeps the signed statement, the assertion and the key to check it: `keyturn ledger
        # verify` proves this approval offline from the event alone.
        payload["passkey"] = {
            **signed.model_dump(mode="json"),
            "statement": review_statement(record, entry.reviewer, entry.decision, approved, redactor),
        }
    return _event(EventType.REVIEWED, entry.reviewer, record, now, payload, redactor)


def _grant_issued(record: RequestRecord, now: datetime, redactor: Redactor) -> Event:
    grant = record.grant
    assert grant is not None
    return _event(
        EventType.GRANT_ISSUED,
        "system",
        record,
        now,
        {
            "grant_id": grant.id,
            "params_digest": ledger_digest(record.approved_params or {}, redactor),
            "expires_at": _iso(grant.expires_at),
        },
        redactor,
    )
