"""A hypothesis state machine driving random interleavings of the whole lifecycle.

Random submits (allow / deny / review with random requirements, on-behalf-of, editable params), reviews by
random principals (requesters, agents, on-behalf-of humans, outsiders, people in two groups) with approvals,
denies and edits, cancels by anyone, clock advances, timer ticks and consumes (valid and forged). After
every step the model checks `workflow.invariant_violations` and its own, independent invariants:

- a terminal state never changes, and a refused transition changes nothing;
- every applied transition bumps the version and carries at least one event about the request;
- no grant is ever consumed twice;
- approved ⇒ a brute-force check finds distinct, qualified humans (not the requester, not the on-behalf-of
  human) filling every requirement slot; and conversely, a pending request whose approvals already fill
  every slot is a bug (the matching would have missed a valid assignment);
- nothing is decided at or after the review deadline;
- on a `step_up` route an approval counts only with a presence proof (a passkey, or a login fresher than the
  route's max age); a chat click, a token or a stale login is refused — and a deny never needs one;
- the review queue (`workflow.may_review`) offers every request a reviewer then successfully decides.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keyturn import workflow
from keyturn.model import (
    ActionRequest,
    Authentication,
    AuthMethod,
    Decision,
    Escalation,
    Principal,
    PrincipalKind,
    RequestRecord,
    Requirement,
    ReviewDecision,
    Route,
    Status,
    Verdict,
    params_digest,
)

GROUPS = ("sre", "security", "data")


def _human(name: str, *groups: str) -> Principal:
    return Principal(id=f"user:{name}", kind=PrincipalKind.HUMAN, groups=frozenset(groups))


PRINCIPALS: tuple[Principal, ...] = (
    Principal(id="agent:bot", kind=PrincipalKind.AGENT),
    Principal(id="agent:sneaky", kind=PrincipalKind.AGENT, groups=frozenset(GROUPS)),  # agents never review
    _human("alice", "sre"),
    _human("bob", "sre"),
    _human("carol", "security"),
    _human("dave", "sre", "security"),  # in two groups
    _human("erin", "data", "security"),
    _human("frank", "marketing"),  # outsider
    _human("owner", "sre", "security", "data"),  # frequently the on-behalf-of human
)
BY_ID = {p.id: p for p in PRINCIPALS}
HUMANS = tuple(p for p in PRINCIPALS if p.kind is PrincipalKind.HUMAN)

T0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
STEP_UP_MAX_AGE = timedelta(minutes=5)

# How a reviewer authenticated for the review at hand: (method, minutes before the review), or None.
AUTHNS: tuple[tuple[AuthMethod, int] | None, ...] = (
    None,
    (AuthMethod.USER_TOKEN, 0),
    (AuthMethod.CHAT, 0),
    (AuthMethod.API_KEY, 0),
    (AuthMethod.OIDC, 1),
    (AuthMethod.OIDC, 30),  # a stale login
    (AuthMethod.CONSOLE, 2),
    (AuthMethod.PASSKEY, 0),
)


def _fresh(authn: tuple[AuthMethod, int] | None) -> bool:
    """The step-up rule, restated independently of the workflow."""
    if authn is None:
        return False
    method, minutes_ago = authn
    return (
        method in (AuthMethod.PASSKEY, AuthMethod.OIDC, AuthMethod.CONSOLE)
        and timedelta(minutes=minutes_ago) <= STEP_UP_MAX_AGE
    )


# 200 keeps CI fast; KEYTURN_HYPOTHESIS_EXAMPLES=2000 explores deeper locally.
EXAMPLES = int(os.environ.get("KEYTURN_HYPOTHESIS_EXAMPLES", "200"))

requirements = st.lists(
    st.builds(
        Requirement,
        groups=st.sampled_from(
            [("sre",), ("security",), ("data",), ("sre", "security"), ("security", "data")]
        ),
        count=st.integers(1, 2),
    ),
    min_size=1,
    max_size=2,
    unique=True,
)


def _max_filled(reqs: tuple[Requirement, ...], approvers: list[Principal]) -> int:
    """Brute force: the most requirement slots distinct approvers can fill, each from a group it names."""
    slots = [r for r in reqs for _ in range(r.count)]
    for size in range(min(len(slots), len(approvers)), 0, -1):
        for chosen_slots in itertools.combinations(slots, size):
            for chosen in itertools.permutations(approvers, size):
                if all(p.groups & set(req.groups) for p, req in zip(chosen, chosen_slots, strict=True)):
                    return size
    return 0


def _quorum_possible(reqs: tuple[Requirement, ...], approvers: list[Principal]) -> bool:
    return _max_filled(reqs, approvers) == sum(r.count for r in reqs)


def _current_approvers(record: RequestRecord) -> list[Principal]:
    """The people whose approvals count for the params that would run now (or were approved)."""
    approved = record.approved_params
    digest = params_digest(approved if approved is not None else workflow.effective_params(record))
    return [
        BY_ID[r.reviewer]
        for r in record.reviews
        if r.decision is ReviewDecision.APPROVE and r.params_digest == digest
    ]


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.records: dict[str, RequestRecord] = {}
        self.consumed_grants: set[str] = set()
        self.counter = 0

    # --- helpers --------------------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def _pick(self, index: int, *, pending_first: bool = False) -> RequestRecord:
        """A stored request; with `pending_first`, a pending one when there is any (where bugs live)."""
        ids = sorted(self.records)
        if pending_first:
            ids = [i for i in ids if self.records[i].status is Status.PENDING] or ids
        return self.records[ids[index % len(ids)]]

    def _apply(self, before: RequestRecord, transition: workflow.Transition) -> RequestRecord:
        after = transition.record
        assert not before.status.terminal, f"terminal {before.status} changed to {after.status}"
        assert after.id == before.id
        assert after.version > before.version, "an applied transition must bump the version"
        assert transition.events, "an applied transition must record events"
        assert all(e.request_id == before.id for e in transition.events)
        assert after.request == before.request, "the original request is never rewritten"
        decided = after.status not in (Status.PENDING, Status.EXPIRED)
        if before.status is Status.PENDING and decided and before.expires_at:
            # decided by a human or a requester: it happened before the deadline (expiry is the timer's)
            assert self.now < before.expires_at, "decided at or after expiry"
        if after.status is Status.EXPIRED and before.status is Status.PENDING:
            assert before.expires_at is not None and self.now >= before.expires_at, "expired early"
        self.records[after.id] = after
        return after

    def _reevaluate(self, original: Route) -> workflow.Reevaluate:
        def reevaluate(request: ActionRequest) -> Verdict:
            rows = request.params.get("rows", 0)
            if isinstance(rows, int) and rows > 10_000:
                return Verdict(decision=Decision.DENY, reason="too many rows")
            if isinstance(rows, int) and rows > 5_000:
                needs = Route(requirements=(Requirement(groups=("data",), count=3),), ttl=original.ttl)
                return Verdict(decision=Decision.REVIEW, route=needs)
            return Verdict(decision=Decision.REVIEW, route=original)

        return reevaluate

    # --- rules ----------------------------------------------------------------------------------------

    @rule(
        decision=st.sampled_from(
            [Decision.REVIEW, Decision.REVIEW, Decision.REVIEW, Decision.ALLOW, Decision.DENY]
        ),
        reqs=requirements,
        ttl_minutes=st.integers(1, 60),
        escalate_after=st.none() | st.integers(1, 30),
        requester=st.sampled_from(PRINCIPALS),
        on_behalf_of=st.none() | st.sampled_from(HUMANS).map(lambda p: p.id),
        rows=st.integers(0, 8000),
        editable=st.booleans(),
        step_up=st.sampled_from([False, False, True]),
    )
    def submit(
        self,
        decision: Decision,
        reqs: list[Requirement],
        ttl_minutes: int,
        escalate_after: int | None,
        requester: Principal,
        on_behalf_of: str | None,
        rows: int,
        editable: bool,
        step_up: bool,
    ) -> None:
        route = Route(
            step_up=step_up,
            step_up_max_age=STEP_UP_MAX_AGE,
            requirements=tuple(reqs),
            ttl=timedelta(minutes=ttl_minutes),
            editable=("params.rows",) if editable else (),
            escalate=(Escalation(after=timedelta(minutes=escalate_after)),) if escalate_after else (),
            grant_ttl=timedelta(minutes=5),
        )
        verdict = Verdict(
            decision=decision,
            reason="policy says no" if decision is Decision.DENY else None,
            route=route if decision is Decision.REVIEW else None,
        )
        request = ActionRequest(
            action="db.export",
            resource="postgres://prod/customers",
            params={"rows": rows, "table": "customers"},
            requester=requester,
            on_behalf_of=on_behalf_of,
        )
        request_id = self._id("req")
        transition = workflow.submit(request_id, request, verdict, self.now, self._id("gr"))
        assert transition.events
        # a new record is version 0, bumped once when it is allowed and gets its grant
        assert transition.record.version == (1 if transition.record.grant is not None else 0)
        expected = {
            Decision.ALLOW: Status.ALLOWED,
            Decision.DENY: Status.DENIED,
            Decision.REVIEW: Status.PENDING,
        }
        assert transition.record.status is expected[decision]
        self.records[request_id] = transition.record

    @precondition(lambda self: bool(self.records))
    @rule(
        index=st.integers(0, 1000),
        pending_first=st.integers(0, 9).map(lambda n: n > 0),
        reviewer=st.sampled_from(PRINCIPALS + HUMANS + HUMANS),
        aim=st.sampled_from(["random"] * 6 + ["requester", "on_behalf_of"]),
        decision=st.sampled_from([ReviewDecision.APPROVE] * 4 + [ReviewDecision.DENY]),
        comment=st.sampled_from(["", " ", "looks fine", "no way"]),
        edit_rows=st.none() | st.none() | st.none() | st.integers(0, 20_000),
        edit_table=st.booleans(),
        authn=st.sampled_from(AUTHNS),
    )
    def review(
        self,
        index: int,
        pending_first: bool,
        reviewer: Principal,
        aim: str,
        decision: ReviewDecision,
        comment: str,
        edit_rows: int | None,
        edit_table: bool,
        authn: tuple[AuthMethod, int] | None,
    ) -> None:
        before = self._pick(index, pending_first=pending_first)
        # aim at the principals the guarantees are about, not only at whoever happens to be drawn
        if aim == "requester":
            reviewer = before.request.requester
        elif aim == "on_behalf_of" and before.request.on_behalf_of:
            reviewer = BY_ID[before.request.on_behalf_of]
        if authn is not None:
            method, minutes_ago = authn
            proof = Authentication(method=method, at=self.now - timedelta(minutes=minutes_ago))
            reviewer = reviewer.model_copy(update={"authn": proof})
        offered = workflow.may_review(before, reviewer, self.now)
        approved_before = any(
            r.reviewer == reviewer.id
            and r.decision is ReviewDecision.APPROVE
            and r.params_digest == params_digest(workflow.effective_params(before))
            for r in before.reviews
        )
        edited: dict[str, Any] | None = None
        if edit_rows is not None:
            edited = {**workflow.effective_params(before), "rows": edit_rows}
            if edit_table:
                edited["table"] = "payments"  # never editable
        route = before.verdict.route
        try:
            transition = workflow.review(
                before,
                reviewer,
                decision,
                comment,
                self.now,
                edited_params=edited,
                reevaluate=self._reevaluate(route) if route else None,
                grant_id=self._id("gr"),
            )
        except workflow.WorkflowError as refused:
            self._check_refusal_was_justified(before, reviewer, decision, comment, edited, refused, authn)
            return
        after = self._apply(before, transition)
        assert offered or approved_before, "the queue hid a request this reviewer could decide"
        assert before.status is Status.PENDING
        assert reviewer.kind is PrincipalKind.HUMAN
        assert reviewer.id != before.request.requester.id
        assert route is not None and reviewer.groups & {g for r in route.requirements for g in r.groups}
        if decision is ReviewDecision.DENY:
            assert after.status is Status.DENIED and comment.strip()
        else:
            assert reviewer.id != before.request.on_behalf_of
            assert not route.step_up or _fresh(authn), "a step-up route approved without presence"
            if edited is not None and edited != workflow.effective_params(before):
                assert edited["table"] == before.request.params["table"], "a non-editable param changed"
                assert isinstance(edited["rows"], int) and edited["rows"] <= 5_000, (
                    "a refused edit went through"
                )

    def _check_refusal_was_justified(
        self,
        record: RequestRecord,
        reviewer: Principal,
        decision: ReviewDecision,
        comment: str,
        edited: dict[str, Any] | None,
        refused: workflow.WorkflowError,
        authn: tuple[AuthMethod, int] | None,
    ) -> None:
        """Refusals must have a reason the guarantees name; a wrong refusal would hide a liveness bug."""
        if isinstance(refused, workflow.NotPending):
            assert record.status is not Status.PENDING
        elif isinstance(refused, workflow.RequestExpired):
            assert record.expires_at is not None and self.now >= record.expires_at
        elif isinstance(refused, workflow.AgentCannotReview):
            assert reviewer.kind is PrincipalKind.AGENT
        elif isinstance(refused, workflow.SelfReview):
            assert reviewer.id == record.request.requester.id
        elif isinstance(refused, workflow.OnBehalfOfCannotApprove):
            assert reviewer.id == record.request.on_behalf_of and decision is ReviewDecision.APPROVE
        elif isinstance(refused, workflow.NotQualified):
            route = record.verdict.route
            assert route is not None
            assert not reviewer.groups & {g for r in route.requirements for g in r.groups}
        elif isinstance(refused, workflow.StepUpRequired):
            route = record.verdict.route
            assert route is not None and route.step_up and not _fresh(authn)
            assert decision is ReviewDecision.APPROVE, "a deny never needs a step-up"
        elif isinstance(refused, workflow.ReasonRequired):
            assert decision is ReviewDecision.DENY and not comment.strip()
        elif isinstance(refused, workflow.RequirementAlreadyMet):
            # only when this person could not raise the number of filled slots, whatever the assignment
            route = record.verdict.route
            assert route is not None and edited in (None, workflow.effective_params(record))
            approvers = _current_approvers(record)
            assert _max_filled(route.requirements, [*approvers, reviewer]) == _max_filled(
                route.requirements, approvers
            ), f"{reviewer.id} was refused although they fill a slot"

    @precondition(lambda self: bool(self.records))
    @rule(index=st.integers(0, 1000), actor=st.sampled_from(PRINCIPALS))
    def cancel(self, index: int, actor: Principal) -> None:
        before = self._pick(index, pending_first=True)
        try:
            transition = workflow.cancel(before, actor, self.now, "never mind")
        except workflow.WorkflowError:
            return
        after = self._apply(before, transition)
        assert actor.id == before.request.requester.id
        assert after.status is Status.CANCELLED

    @rule(minutes=st.sampled_from([0, 0, 1, 2, 5, 15, 45]), seconds=st.integers(0, 59))
    def advance_clock(self, minutes: int, seconds: int) -> None:
        self.now += timedelta(minutes=minutes, seconds=seconds)

    @precondition(lambda self: bool(self.records))
    @rule()
    def tick(self) -> None:
        # what the timer does: every request with a due transition gets it, the others are untouched
        for request_id in sorted(self.records):
            before = self.records[request_id]
            try:
                transition = workflow.due_transition(before, self.now)
            except workflow.NothingToDo:
                deadline = workflow.next_deadline(before)
                escalation_done = before.status is Status.PENDING and (
                    before.verdict.route is None
                    or before.escalation_level >= len(before.verdict.route.escalate)
                )
                assert deadline is None or deadline > self.now or escalation_done
                continue
            after = self._apply(before, transition)
            assert after.status in (Status.EXPIRED, Status.PENDING)
            if after.status is Status.PENDING:
                assert after.escalation_level == before.escalation_level + 1

    @precondition(lambda self: bool(self.records))
    @rule(
        index=st.integers(0, 1000),
        other=st.integers(0, 1000),
        executor=st.sampled_from(PRINCIPALS),
        forgery=st.sampled_from(["none", "params", "action", "resource", "grant_id", "other_request"]),
    )
    def consume(self, index: int, other: int, executor: Principal, forgery: str) -> None:
        before = self._pick(index)
        source = self._pick(other) if forgery == "other_request" else before
        grant = source.grant
        if grant is None:
            presented = workflow.GrantPresentation("gr_forged", before.id, "db.export", "", "sha256:x")
        else:
            presented = workflow.GrantPresentation(
                grant_id=grant.id,
                request_id=source.id,
                action=source.request.action,
                resource=source.request.resource,
                params_digest=grant.params_digest,
            )
            if forgery == "params":
                presented = _replace(presented, params_digest=params_digest({"rows": 10**9}))
            elif forgery == "action":
                presented = _replace(presented, action="db.drop")
            elif forgery == "resource":
                presented = _replace(presented, resource="postgres://prod/payments")
            elif forgery == "grant_id":
                presented = _replace(presented, grant_id=grant.id + "x")
        try:
            transition = workflow.consume_grant(before, presented, executor, self.now)
        except workflow.WorkflowError:
            return
        after = self._apply(before, transition)
        assert forgery == "none" or (forgery == "other_request" and source.id == before.id)
        assert before.grant is not None and before.grant.id not in self.consumed_grants, (
            "grant consumed twice"
        )
        assert before.status.runnable and self.now < before.grant.expires_at
        self.consumed_grants.add(before.grant.id)
        assert after.status is Status.EXECUTING and after.executor == executor.id

    @precondition(lambda self: bool(self.records))
    @rule(index=st.integers(0, 1000), actor=st.sampled_from(PRINCIPALS), succeeded=st.booleans())
    def report(self, index: int, actor: Principal, succeeded: bool) -> None:
        before = self._pick(index)
        try:
            transition = workflow.report_result(before, actor, succeeded, self.now)
        except workflow.WorkflowError:
            return
        after = self._apply(before, transition)
        assert before.status is Status.EXECUTING
        assert after.status is (Status.SUCCEEDED if succeeded else Status.FAILED)

    # --- invariants -----------------------------------------------------------------------------------

    @invariant()
    def lifecycle_invariants_hold(self) -> None:
        for record in self.records.values():
            assert workflow.invariant_violations(record) == [], (
                record.id,
                workflow.invariant_violations(record),
            )

    @invariant()
    def approval_means_distinct_qualified_humans(self) -> None:
        for record in self.records.values():
            route = record.verdict.route
            if route is None or record.verdict.decision is not Decision.REVIEW:
                continue
            decided = record.approved_params is not None
            approvers = _current_approvers(record)
            for who in approvers:
                assert who.kind is PrincipalKind.HUMAN
                assert who.id not in (record.request.requester.id, record.request.on_behalf_of)
            assert len({p.id for p in approvers}) == len(approvers), "one human counted twice"
            possible = _quorum_possible(route.requirements, approvers)
            if decided:
                assert possible, f"{record.id} approved without a valid assignment of distinct humans"
            elif record.status is Status.PENDING:
                assert not possible, f"{record.id} has a full quorum but is still pending"

    @invariant()
    def runnable_requests_hold_an_unconsumed_grant(self) -> None:
        for record in self.records.values():
            if record.status.runnable:
                assert record.grant is not None and record.grant.consumed_at is None
            if record.status in (Status.DENIED, Status.CANCELLED) or (
                record.status is Status.EXPIRED and record.approved_params is None
            ):
                assert record.grant is None, "a request that never got approval holds a grant"


def _replace(p: workflow.GrantPresentation, **changes: str) -> workflow.GrantPresentation:
    fields = {
        "grant_id": p.grant_id,
        "request_id": p.request_id,
        "action": p.action,
        "resource": p.resource,
        "params_digest": p.params_digest,
        **changes,
    }
    return workflow.GrantPresentation(**fields)


Lifecycle.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=30, deadline=None)
TestLifecycle = Lifecycle.TestCase
