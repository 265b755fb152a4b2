"""Adversarial tests of every guarantee of DESIGN §1, against `keyturn.workflow` directly (no I/O).

Each test tries to break one guarantee the way a careless policy, a confused reviewer or a malicious agent
would, and checks that the lifecycle refuses with the right error class — and leaves nothing half-applied.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keyturn import workflow
from keyturn.model import (
    ActionRequest,
    Authentication,
    AuthMethod,
    Decision,
    Escalation,
    EventType,
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

T0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
AGENT = Principal(id="agent:deploy-bot", kind=PrincipalKind.AGENT)
OTHER_AGENT = Principal(id="agent:other-bot", kind=PrincipalKind.AGENT, groups=frozenset({"sre", "security"}))


def human(name: str, *groups: str) -> Principal:
    return Principal(id=f"user:{name}@example.com", kind=PrincipalKind.HUMAN, groups=frozenset(groups))


ALICE = human("alice", "sre")
BOB = human("bob", "sre")
CAROL = human("carol", "security")
DAVE = human("dave", "sre", "security")  # in both groups
ERIN = human("erin", "marketing")  # outside every route group
OWNER = human("owner", "sre", "security")  # the human the agent acts for


def route(
    *requirements: Requirement,
    ttl: timedelta = timedelta(hours=1),
    editable: tuple[str, ...] = (),
    escalate: tuple[Escalation, ...] = (),
    redact: tuple[str, ...] = (),
) -> Route:
    return Route(
        requirements=requirements or (Requirement(groups=("sre",), count=1),),
        ttl=ttl,
        editable=editable,
        escalate=escalate,
        redact=redact,
    )


def review_verdict(r: Route | None = None) -> Verdict:
    return Verdict(decision=Decision.REVIEW, route=r or route(), policy_revision="sha256:test")


def submit(
    verdict: Verdict | None = None,
    *,
    requester: Principal = AGENT,
    params: dict[str, Any] | None = None,
    on_behalf_of: str | None = None,
    request_id: str = "req_1",
    at: datetime = T0,
) -> RequestRecord:
    request = ActionRequest(
        action="db.export",
        resource="postgres://prod/customers",
        params={"rows": 5000, "tags": ["pii"]} if params is None else params,
        justification="quarterly report",
        requester=requester,
        on_behalf_of=on_behalf_of,
    )
    transition = workflow.submit(request_id, request, verdict or review_verdict(), at, f"gr_{request_id}")
    assert transition.events, "a submit always records events"
    return transition.record


def approve(
    record: RequestRecord,
    who: Principal,
    at: datetime = T0 + timedelta(minutes=1),
    **kwargs: Any,
) -> RequestRecord:
    return workflow.review(
        record, who, ReviewDecision.APPROVE, "ok", at, grant_id=f"gr_{record.id}", **kwargs
    ).record


def deny(
    record: RequestRecord, who: Principal, reason: str = "too risky", at: datetime | None = None
) -> RequestRecord:
    moment = at or T0 + timedelta(minutes=1)
    return workflow.review(record, who, ReviewDecision.DENY, reason, moment, grant_id="gr_x").record


def presentation(record: RequestRecord, **changes: str) -> workflow.GrantPresentation:
    assert record.grant is not None
    fields = {
        "grant_id": record.grant.id,
        "request_id": record.id,
        "action": record.request.action,
        "resource": record.request.resource,
        "params_digest": record.grant.params_digest,
        **changes,
    }
    return workflow.GrantPresentation(**fields)


SRE2_SEC1 = route(Requirement(groups=("sre",), count=2), Requirement(groups=("security",), count=1))


# --- submit -------------------------------------------------------------------------------------------


def test_submit_allow_issues_a_grant_bound_to_the_params() -> None:
    record = submit(Verdict(decision=Decision.ALLOW, policy_revision="r"))
    assert record.status is Status.ALLOWED
    assert record.grant is not None
    assert record.grant.params_digest == params_digest(record.request.params)
    assert record.grant.expires_at == T0 + timedelta(minutes=5)


def test_submit_deny_records_the_reason_and_no_grant() -> None:
    transition = workflow.submit(
        "req_d",
        ActionRequest(action="k8s.apply", requester=AGENT),
        Verdict(decision=Decision.DENY, reason="Friday change freeze"),
        T0,
        "gr_d",
    )
    assert transition.record.status is Status.DENIED
    assert transition.record.grant is None
    assert transition.events[-1].type is EventType.DENIED
    assert transition.events[-1].payload["reason"] == "Friday change freeze"


def test_a_review_verdict_without_approvers_is_refused_not_silently_allowed() -> None:
    empty = Verdict(decision=Decision.REVIEW, route=None)
    with pytest.raises(workflow.WorkflowError):
        workflow.submit("req_e", ActionRequest(action="x", requester=AGENT), empty, T0, "gr_e")


# --- guarantee 1: no self review, no agent review -----------------------------------------------------


def test_requester_never_reviews_its_own_request_even_when_qualified() -> None:
    record = submit(requester=DAVE)  # a human submits and is in the route group
    with pytest.raises(workflow.SelfReview):
        approve(record, DAVE)
    with pytest.raises(workflow.SelfReview):
        deny(record, DAVE)


def test_an_agent_never_reviews_even_with_the_right_groups() -> None:
    record = submit()
    with pytest.raises(workflow.AgentCannotReview):
        approve(record, OTHER_AGENT)
    with pytest.raises(workflow.AgentCannotReview):
        deny(record, OTHER_AGENT)


def test_the_requesting_agent_cannot_review_itself() -> None:
    record = submit()
    with pytest.raises(workflow.ReviewRefused):
        approve(record, AGENT)


# --- guarantee 2: on-behalf-of does not count ---------------------------------------------------------


def test_the_on_behalf_of_human_cannot_approve() -> None:
    record = submit(on_behalf_of=OWNER.id)
    with pytest.raises(workflow.OnBehalfOfCannotApprove):
        approve(record, OWNER)
    # ... nor sneak an approval in by editing params.
    with pytest.raises(workflow.OnBehalfOfCannotApprove):
        approve(
            record, OWNER, edited_params={"rows": 10, "tags": ["pii"]}, reevaluate=lambda r: review_verdict()
        )


def test_the_on_behalf_of_human_may_deny_their_own_agents_request() -> None:
    # Stopping one's own agent only makes things safer; the guarantee is about counting toward quorum.
    record = submit(on_behalf_of=OWNER.id)
    denied = deny(record, OWNER, "I did not ask for this")
    assert denied.status is Status.DENIED
    assert workflow.invariant_violations(denied) == []


def test_on_behalf_of_human_outside_route_groups_cannot_deny() -> None:
    owner = human("owner2", "marketing")
    record = submit(on_behalf_of=owner.id)
    with pytest.raises(workflow.NotQualified):
        deny(record, owner)


# --- guarantee 3: qualified, distinct, one requirement each -------------------------------------------


def test_a_reviewer_outside_the_route_groups_is_not_qualified() -> None:
    record = submit()
    with pytest.raises(workflow.NotQualified):
        approve(record, ERIN)
    with pytest.raises(workflow.NotQualified):
        deny(record, ERIN)


def test_group_membership_is_checked_at_review_time() -> None:
    record = submit()
    left_sre = human("alice")  # alice, no longer in sre
    with pytest.raises(workflow.NotQualified):
        approve(record, left_sre)


def test_one_person_cannot_approve_twice() -> None:
    record = submit(review_verdict(route(Requirement(groups=("sre",), count=2))))
    once = approve(record, ALICE)
    assert once.status is Status.PENDING
    with pytest.raises(workflow.AlreadyReviewed):
        approve(once, ALICE, at=T0 + timedelta(minutes=2))
    # The same id with other groups is still the same person.
    with pytest.raises(workflow.AlreadyReviewed):
        approve(once, human("alice", "sre", "security"), at=T0 + timedelta(minutes=2))


def test_one_person_in_both_groups_fills_one_requirement_only() -> None:
    record = submit(review_verdict(SRE2_SEC1))
    record = approve(record, DAVE)
    record = approve(record, ALICE)
    # dave + alice fill at most two of the three slots, however dave is counted
    assert record.status is Status.PENDING
    assert len(workflow.outstanding(record)) == 1
    with pytest.raises(workflow.AlreadyReviewed):
        approve(record, DAVE, at=T0 + timedelta(minutes=3))


@pytest.mark.parametrize(
    "order",
    [
        (DAVE, ALICE, CAROL),
        (ALICE, DAVE, CAROL),
        (CAROL, DAVE, ALICE),
        (DAVE, CAROL, ALICE),
        (ALICE, CAROL, DAVE),
    ],
)
def test_two_from_sre_and_one_from_security_needs_three_people_in_any_order(
    order: tuple[Principal, ...],
) -> None:
    record = submit(review_verdict(SRE2_SEC1))
    for i, who in enumerate(order):
        assert record.status is Status.PENDING
        record = approve(record, who, at=T0 + timedelta(minutes=i + 1))
    assert record.status is Status.APPROVED
    assert workflow.invariant_violations(record) == []
    assert {r.reviewer for r in record.reviews} == {p.id for p in order}


def test_a_person_in_two_groups_is_moved_to_where_they_let_others_count() -> None:
    # dave could fill sre or security; alice only sre. The order must not matter: dave moves to security.
    record = submit(review_verdict(route(Requirement(groups=("sre",)), Requirement(groups=("security",)))))
    record = approve(record, DAVE)
    record = approve(record, ALICE, at=T0 + timedelta(minutes=2))
    assert record.status is Status.APPROVED
    assert workflow.invariant_violations(record) == []


def test_a_person_whose_requirements_are_already_met_is_refused_not_counted_twice() -> None:
    record = submit(review_verdict(SRE2_SEC1))
    record = approve(record, ALICE)
    record = approve(record, BOB)
    # sre is full: a third sre-only approver would not fill anything
    with pytest.raises(workflow.RequirementAlreadyMet):
        approve(record, human("frank", "sre"), at=T0 + timedelta(minutes=2))
    record = approve(record, DAVE, at=T0 + timedelta(minutes=2))  # dave fills security
    assert record.status is Status.APPROVED


def test_two_from_sre_and_one_from_security_with_only_two_people_never_approves() -> None:
    record = submit(review_verdict(SRE2_SEC1))
    record = approve(record, DAVE)
    record = approve(record, CAROL)
    assert record.status is Status.PENDING
    assert workflow.outstanding(record) == ["1 from sre"]


# --- guarantee 4: deny ends, with a reason ------------------------------------------------------------


@pytest.mark.parametrize("reason", ["", "   ", "\n\t"])
def test_deny_without_reason_is_refused(reason: str) -> None:
    record = submit()
    with pytest.raises(workflow.ReasonRequired):
        deny(record, ALICE, reason)


def test_a_qualified_deny_ends_the_request_even_after_approvals() -> None:
    record = submit(review_verdict(SRE2_SEC1))
    record = approve(record, ALICE)
    record = approve(record, BOB)
    transition = workflow.review(
        record, CAROL, ReviewDecision.DENY, "no", T0 + timedelta(minutes=3), grant_id="g"
    )
    assert transition.record.status is Status.DENIED
    assert transition.record.grant is None
    assert [e.type for e in transition.events] == [EventType.REVIEWED, EventType.DENIED]
    assert transition.events[-1].payload["reason"] == "no"


def test_a_deny_cannot_carry_an_edit() -> None:
    record = submit(review_verdict(route(editable=("params.rows",))))
    with pytest.raises(workflow.EditRefused):
        workflow.review(
            record,
            ALICE,
            ReviewDecision.DENY,
            "no",
            T0,
            edited_params={"rows": 1, "tags": ["pii"]},
            grant_id="g",
        )


# --- guarantee 5: edits -------------------------------------------------------------------------------


def edit_route() -> Route:
    return route(Requirement(groups=("sre",), count=2), editable=("params.rows",))


def allowing(_: ActionRequest) -> Verdict:
    return review_verdict(edit_route())


def test_an_edit_to_a_non_editable_param_is_refused() -> None:
    record = submit(review_verdict(edit_route()))
    with pytest.raises(workflow.EditRefused, match=r"params\.tags"):
        approve(record, ALICE, edited_params={"rows": 5000, "tags": []}, reevaluate=allowing)
    with pytest.raises(workflow.EditRefused, match=r"params\.extra"):
        approve(record, ALICE, edited_params={"rows": 5000, "tags": ["pii"], "extra": 1}, reevaluate=allowing)
    with pytest.raises(workflow.EditRefused, match=r"params\.tags"):
        approve(record, ALICE, edited_params={"rows": 5000}, reevaluate=allowing)  # removal is a change too


def test_a_non_editable_route_refuses_every_edit() -> None:
    record = submit()
    with pytest.raises(workflow.EditRefused):
        approve(record, ALICE, edited_params={"rows": 1, "tags": ["pii"]}, reevaluate=allowing)


def test_an_edit_that_policy_denies_is_refused() -> None:
    record = submit(review_verdict(edit_route()))

    def denies_big(request: ActionRequest) -> Verdict:
        if request.params["rows"] > 10_000:
            return Verdict(decision=Decision.DENY, reason="too many rows")
        return allowing(request)

    with pytest.raises(workflow.EditRefused, match="too many rows"):
        approve(record, ALICE, edited_params={"rows": 50_000, "tags": ["pii"]}, reevaluate=denies_big)
    assert record.status is Status.PENDING and record.reviews == ()


def test_an_edit_that_needs_other_approvers_is_refused() -> None:
    record = submit(review_verdict(edit_route()))

    def needs_security(request: ActionRequest) -> Verdict:
        return review_verdict(route(Requirement(groups=("security",), count=1)))

    with pytest.raises(workflow.EditRefused, match="other approvers"):
        approve(record, ALICE, edited_params={"rows": 10, "tags": ["pii"]}, reevaluate=needs_security)


def test_an_edit_without_reevaluation_is_refused() -> None:
    record = submit(review_verdict(edit_route()))
    with pytest.raises(workflow.EditRefused):
        approve(record, ALICE, edited_params={"rows": 10, "tags": ["pii"]})


def test_an_edit_resets_earlier_approvals_and_the_grant_binds_the_edited_params() -> None:
    record = submit(review_verdict(edit_route()))
    record = approve(record, ALICE)  # approves the original 5000 rows
    edited = workflow.review(
        record,
        BOB,
        ReviewDecision.APPROVE,
        "narrowed",
        T0 + timedelta(minutes=2),
        edited_params={"rows": 100, "tags": ["pii"]},
        reevaluate=allowing,
        grant_id="gr_e",
    )
    # alice approved other params: her approval does not count for the edited ones
    assert edited.record.status is Status.PENDING
    types = [e.type for e in edited.events]
    assert EventType.PARAMS_EDITED in types
    edit_event = next(e for e in edited.events if e.type is EventType.PARAMS_EDITED)
    assert edit_event.payload["before"]["rows"] == 5000 and edit_event.payload["after"]["rows"] == 100
    record = approve(edited.record, ALICE, at=T0 + timedelta(minutes=3))  # alice approves the edit
    assert record.status is Status.APPROVED
    assert record.approved_params == {"rows": 100, "tags": ["pii"]}
    assert record.grant is not None and record.grant.params_digest == params_digest(
        {"rows": 100, "tags": ["pii"]}
    )
    assert record.request.params["rows"] == 5000  # the original is kept
    assert workflow.invariant_violations(record) == []


def test_an_edit_hides_redacted_values_in_the_ledger_event() -> None:
    # an ordinary key name: only the route's `redact` hides it (a `dsn_*` key would be hidden by name anyway)
    r = route(editable=("params.rows",), redact=("params.customer_ssn",))
    record = submit(review_verdict(r), params={"rows": 5, "customer_ssn": "078-05-1120"})
    transition = workflow.review(
        record,
        ALICE,
        ReviewDecision.APPROVE,
        "",
        T0,
        edited_params={"rows": 1, "customer_ssn": "078-05-1120"},
        reevaluate=lambda _: review_verdict(r),
        grant_id="g",
    )
    assert any(e.type is EventType.PARAMS_EDITED for e in transition.events)
    for event in transition.events:
        assert "078-05-1120" not in str(event.payload)


# --- guarantee 6: nothing after expiry ----------------------------------------------------------------


def test_review_at_or_after_expiry_is_refused() -> None:
    record = submit(review_verdict(route(ttl=timedelta(minutes=10))))
    for at in (T0 + timedelta(minutes=10), T0 + timedelta(hours=3)):
        with pytest.raises(workflow.RequestExpired):
            approve(record, ALICE, at=at)
        with pytest.raises(workflow.RequestExpired):
            deny(record, ALICE, at=at)
    # one microsecond before the deadline is still in time
    assert (
        approve(record, ALICE, at=T0 + timedelta(minutes=10) - timedelta(microseconds=1)).status
        is Status.APPROVED
    )


def test_cancel_after_expiry_is_refused() -> None:
    record = submit(review_verdict(route(ttl=timedelta(minutes=10))))
    with pytest.raises(workflow.RequestExpired):
        workflow.cancel(record, AGENT, T0 + timedelta(minutes=10))


def test_an_unanswered_request_expires_never_approves() -> None:
    record = submit(review_verdict(SRE2_SEC1))
    record = approve(record, ALICE)
    record = approve(record, BOB)
    with pytest.raises(workflow.NothingToDo):
        workflow.expire(record, T0 + timedelta(minutes=59))
    transition = workflow.due_transition(record, T0 + timedelta(hours=1))
    assert transition.record.status is Status.EXPIRED
    assert transition.events[0].payload["still_needed"] == ["1 from security"]
    assert transition.record.grant is None


def test_escalation_keeps_the_request_pending_and_expiry_wins_over_it() -> None:
    r = route(
        ttl=timedelta(minutes=30), escalate=(Escalation(after=timedelta(minutes=5), notify=("teams:x",)),)
    )
    record = submit(review_verdict(r))
    with pytest.raises(workflow.NothingToDo):
        workflow.due_transition(record, T0 + timedelta(minutes=4))
    escalated = workflow.due_transition(record, T0 + timedelta(minutes=5))
    assert escalated.record.status is Status.PENDING and escalated.record.escalation_level == 1
    with pytest.raises(workflow.NothingToDo):
        workflow.escalate(escalated.record, T0 + timedelta(minutes=6))  # only one step
    # never escalated and already past the deadline: it expires, it does not escalate
    late = workflow.due_transition(record, T0 + timedelta(minutes=31))
    assert late.record.status is Status.EXPIRED


# --- terminal states never change ---------------------------------------------------------------------


def terminal_records() -> list[RequestRecord]:
    pending = submit()
    approved = approve(pending, ALICE)
    executing = workflow.consume_grant(
        approved, presentation(approved), AGENT, T0 + timedelta(minutes=2)
    ).record
    return [
        deny(pending, ALICE),
        workflow.cancel(pending, AGENT, T0 + timedelta(minutes=1)).record,
        workflow.expire(pending, T0 + timedelta(hours=2)).record,
        workflow.report_result(executing, AGENT, True, T0 + timedelta(minutes=3)).record,
        workflow.report_result(executing, AGENT, False, T0 + timedelta(minutes=3)).record,
        submit(Verdict(decision=Decision.DENY, reason="no")),
    ]


@pytest.mark.parametrize("record", terminal_records(), ids=lambda r: r.status.value)
def test_a_terminal_request_never_changes(record: RequestRecord) -> None:
    assert record.status.terminal
    later = T0 + timedelta(minutes=5)
    attempts: list[Callable[[], object]] = [
        lambda: approve(record, BOB, at=later),
        lambda: deny(record, BOB, at=later),
        lambda: workflow.cancel(record, AGENT, later),
        lambda: workflow.due_transition(record, T0 + timedelta(days=2)),
        lambda: workflow.report_result(record, AGENT, True, later),
    ]
    if record.grant is not None:
        attempts.append(lambda: workflow.consume_grant(record, presentation(record), AGENT, later))
    for attempt in attempts:
        with pytest.raises(workflow.WorkflowError):
            attempt()


def test_review_of_an_approved_request_is_refused() -> None:
    approved = approve(submit(), ALICE)
    with pytest.raises(workflow.NotPending):
        approve(approved, BOB)
    with pytest.raises(workflow.NotPending):
        deny(approved, BOB)


# --- cancel -------------------------------------------------------------------------------------------


def test_only_the_requester_cancels() -> None:
    record = submit(on_behalf_of=OWNER.id)
    for who in (ALICE, OWNER, OTHER_AGENT):
        with pytest.raises(workflow.NotRequester):
            workflow.cancel(record, who, T0)
    cancelled = workflow.cancel(record, AGENT, T0, "changed my mind")
    assert cancelled.record.status is Status.CANCELLED
    assert cancelled.events[0].payload["reason"] == "changed my mind"


# --- guarantee 7: grants ------------------------------------------------------------------------------


def approved_record(request_id: str = "req_1", params: dict[str, Any] | None = None) -> RequestRecord:
    return approve(submit(request_id=request_id, params=params), ALICE)


def test_a_grant_is_consumed_once() -> None:
    record = approved_record()
    consumed = workflow.consume_grant(record, presentation(record), AGENT, T0 + timedelta(minutes=2))
    assert consumed.record.status is Status.EXECUTING
    assert consumed.record.executor == AGENT.id
    assert consumed.events[0].type is EventType.GRANT_CONSUMED
    with pytest.raises(workflow.GrantAlreadyConsumed):
        workflow.consume_grant(consumed.record, presentation(record), AGENT, T0 + timedelta(minutes=2))


@pytest.mark.parametrize(
    "forgery",
    [
        {"params_digest": params_digest({"rows": 999_999, "tags": ["pii"]})},
        {"action": "db.drop"},
        {"resource": "postgres://prod/payments"},
        {"grant_id": "gr_someone_else"},
        {"request_id": "req_2"},
    ],
    ids=["params", "action", "resource", "grant-id", "request-id"],
)
def test_a_grant_presented_with_other_terms_is_refused(forgery: dict[str, str]) -> None:
    record = approved_record()
    with pytest.raises(workflow.GrantMismatch):
        workflow.consume_grant(record, presentation(record, **forgery), AGENT, T0 + timedelta(minutes=2))


# --- submit and consume in one transition (execute: true) ---------------------------------------------


def _submit_and_consume(verdict: Verdict) -> workflow.Transition:
    request = ActionRequest(
        action="db.export", resource="postgres://prod/customers", params={"rows": 5}, requester=AGENT
    )
    return workflow.submit_and_consume("req_x", request, verdict, T0, "gr_x")


def test_submit_and_consume_is_submit_then_consume_in_one_transition() -> None:
    allow = Verdict(decision=Decision.ALLOW, policy_revision="r")
    one = _submit_and_consume(allow)
    two_first = workflow.submit("req_x", one.record.request, allow, T0, "gr_x")
    two = workflow.consume_grant(two_first.record, presentation(two_first.record), AGENT, T0)
    assert one.record == two.record  # the same state, version included, as the two-step path
    assert one.events == two_first.events + two.events  # submitted, allowed, grant issued, grant consumed
    assert [e.type for e in one.events] == [
        EventType.SUBMITTED,
        EventType.ALLOWED,
        EventType.GRANT_ISSUED,
        EventType.GRANT_CONSUMED,
    ]
    assert one.record.status is Status.EXECUTING and one.record.executor == AGENT.id
    assert workflow.invariant_violations(one.record) == []
    with pytest.raises(workflow.GrantAlreadyConsumed):
        workflow.consume_grant(one.record, presentation(one.record), AGENT, T0)


@pytest.mark.parametrize(
    "verdict",
    [
        review_verdict(),
        Verdict(decision=Decision.DENY, reason="no"),
        Verdict(decision=Decision.ALLOW, executors=("agent:runner",)),  # not the requester's grant
    ],
)
def test_submit_and_consume_leaves_anything_but_the_requesters_allow_to_submit(verdict: Verdict) -> None:
    plain = workflow.submit(
        "req_x",
        ActionRequest(
            action="db.export", resource="postgres://prod/customers", params={"rows": 5}, requester=AGENT
        ),
        verdict,
        T0,
        "gr_x",
    )
    assert _submit_and_consume(verdict) == plain


def test_another_requests_grant_does_not_open_this_one() -> None:
    mine = approved_record("req_1")
    theirs = approved_record("req_2")
    with pytest.raises(workflow.GrantMismatch):
        workflow.consume_grant(mine, presentation(theirs), AGENT, T0 + timedelta(minutes=2))


def test_a_grant_whose_stored_digest_does_not_match_the_approved_params_is_refused() -> None:
    record = approved_record()
    assert record.grant is not None
    tampered = record.model_copy(update={"approved_params": {"rows": 1, "tags": []}})
    with pytest.raises(workflow.GrantMismatch):
        workflow.consume_grant(tampered, presentation(record), AGENT, T0 + timedelta(minutes=2))


def test_an_expired_grant_is_refused_and_expires_the_request() -> None:
    record = approved_record()
    assert record.grant is not None
    at = record.grant.expires_at
    with pytest.raises(workflow.GrantExpired):
        workflow.consume_grant(record, presentation(record), AGENT, at)
    expired = workflow.due_transition(record, at)
    assert expired.record.status is Status.EXPIRED
    assert expired.events[0].type is EventType.GRANT_EXPIRED
    with pytest.raises(workflow.GrantRefused):
        workflow.consume_grant(expired.record, presentation(record), AGENT, at)
    # An expired request refuses its grant on its status alone, even to a replica whose clock is behind.
    with pytest.raises(workflow.GrantRefused) as refused:
        workflow.consume_grant(expired.record, presentation(record), AGENT, at - timedelta(seconds=30))
    assert not isinstance(refused.value, workflow.GrantExpired)


def test_a_pending_request_has_no_grant_to_consume() -> None:
    record = submit()
    forged = workflow.GrantPresentation(
        "gr_req_1", record.id, "db.export", "postgres://prod/customers", "sha256:0"
    )
    with pytest.raises(workflow.GrantMismatch):
        workflow.consume_grant(record, forged, AGENT, T0)


# --- results ------------------------------------------------------------------------------------------


def test_a_result_before_consume_is_refused() -> None:
    record = approved_record()
    with pytest.raises(workflow.ResultRefused):
        workflow.report_result(record, AGENT, True, T0 + timedelta(minutes=2))


def test_only_the_executor_or_requester_reports_the_result() -> None:
    named = review_verdict(route().model_copy(update={"executors": ("agent:runner",)}))
    record = approve(submit(named), ALICE)
    executor = Principal(id="agent:runner", kind=PrincipalKind.AGENT)
    executing = workflow.consume_grant(
        record, presentation(record), executor, T0 + timedelta(minutes=2)
    ).record
    with pytest.raises(workflow.ResultRefused):
        workflow.report_result(executing, ALICE, True, T0 + timedelta(minutes=3))
    done = workflow.report_result(executing, executor, False, T0 + timedelta(minutes=3), detail="exit 1")
    assert done.record.status is Status.FAILED
    assert done.record.result == {"status": "failed", "output_digest": None, "detail": "exit 1"}


# --- invariants and bookkeeping -----------------------------------------------------------------------


def test_every_applied_transition_bumps_the_version_and_records_events() -> None:
    record = submit(review_verdict(SRE2_SEC1))
    versions = [record.version]
    for i, who in enumerate((ALICE, BOB, CAROL)):
        transition = workflow.review(
            record, who, ReviewDecision.APPROVE, "", T0 + timedelta(minutes=i + 1), grant_id="gr"
        )
        assert transition.events
        assert transition.record.version > record.version
        record = transition.record
        versions.append(record.version)
    assert versions == sorted(set(versions))


def test_invariant_violations_detects_a_forged_self_approval() -> None:
    # The checker itself must be able to fail: a hand-made record that breaks guarantee 1 is reported.
    record = approve(submit(), ALICE)
    forged_review = record.reviews[0].model_copy(update={"reviewer": AGENT.id})
    forged = record.model_copy(update={"reviews": (forged_review,)})
    problems = workflow.invariant_violations(forged)
    assert "the requester reviewed its own request" in problems
    unapproved = record.model_copy(update={"reviews": ()})
    assert "approved without quorum" in workflow.invariant_violations(unapproved)


def test_an_edit_that_policy_would_redact_differently_is_refused() -> None:
    r = route(editable=("params.rows",), redact=("params.connection_string",))
    record = submit(review_verdict(r))

    def redacts_more(_: ActionRequest) -> Verdict:
        wider = route(editable=("params.rows",), redact=("params.connection_string", "params.tags"))
        return review_verdict(wider)

    with pytest.raises(workflow.EditRefused, match=r"also redact params\.tags"):
        approve(record, ALICE, edited_params={"rows": 10, "tags": ["pii"]}, reevaluate=redacts_more)
    assert approve(
        record, ALICE, edited_params={"rows": 10, "tags": ["pii"]}, reevaluate=lambda _: review_verdict(r)
    ).approved_params == {"rows": 10, "tags": ["pii"]}


def test_an_edit_that_would_need_a_step_up_is_refused() -> None:
    r = route(editable=("params.rows",))
    record = submit(review_verdict(r))
    stepped = r.model_copy(update={"step_up": True})
    with pytest.raises(workflow.EditRefused, match="step-up"):
        approve(
            record,
            ALICE,
            edited_params={"rows": 10, "tags": ["pii"]},
            reevaluate=lambda _: review_verdict(stepped),
        )


# --- guarantee 10: step-up ----------------------------------------------------------------------------


def step_up_record(max_age: timedelta = timedelta(minutes=5)) -> RequestRecord:
    stepped = route().model_copy(update={"step_up": True, "step_up_max_age": max_age})
    return submit(review_verdict(stepped))


def proving(who: Principal, method: AuthMethod, minutes_ago: float) -> Principal:
    at = T0 + timedelta(minutes=1) - timedelta(minutes=minutes_ago)
    return who.model_copy(update={"authn": Authentication(method=method, at=at)})


@pytest.mark.parametrize(
    ("method", "minutes_ago"),
    [
        (AuthMethod.CHAT, 0),  # a click in Slack or Teams proves only that a linked account clicked
        (AuthMethod.USER_TOKEN, 0),
        (AuthMethod.API_KEY, 0),
        (AuthMethod.WORKLOAD_JWT, 0),
        (AuthMethod.OIDC, 6),  # a login older than the route's max age
        (AuthMethod.CONSOLE, 60),
        (AuthMethod.PASSKEY, -5),  # a proof from the future beyond the clock tolerance
        (AuthMethod.PASSKEY, 0),  # "passkey" claimed without an assertion over this very review
    ],
)
def test_a_step_up_route_refuses_an_approval_without_fresh_presence(
    method: AuthMethod, minutes_ago: float
) -> None:
    record = step_up_record()
    with pytest.raises(workflow.StepUpRequired):
        approve(record, proving(ALICE, method, minutes_ago), at=T0 + timedelta(minutes=1))
    with pytest.raises(workflow.StepUpRequired):
        approve(record, ALICE, at=T0 + timedelta(minutes=1))  # no authentication recorded at all


@pytest.mark.parametrize(("method", "minutes_ago"), [(AuthMethod.OIDC, 4), (AuthMethod.CONSOLE, 1)])
def test_a_step_up_route_counts_a_fresh_login(method: AuthMethod, minutes_ago: float) -> None:
    done = approve(step_up_record(), proving(ALICE, method, minutes_ago), at=T0 + timedelta(minutes=1))
    assert done.status is Status.APPROVED


def test_a_deny_on_a_step_up_route_needs_no_presence_proof() -> None:
    chat = proving(ALICE, AuthMethod.CHAT, 0)
    denied = workflow.review(
        step_up_record(), chat, ReviewDecision.DENY, "not now", T0 + timedelta(minutes=1), grant_id="gr_x"
    )
    assert denied.record.status is Status.DENIED


def test_the_review_queue_offers_a_step_up_request_to_a_token_holder_who_must_then_step_up() -> None:
    record, now = step_up_record(), T0 + timedelta(minutes=1)
    token = proving(ALICE, AuthMethod.USER_TOKEN, 0)
    assert workflow.may_review(record, token, now)  # offered: the console asks for the proof
    refusal = workflow.review_refusal(record, token, now, ReviewDecision.APPROVE)
    assert isinstance(refusal, workflow.StepUpRequired)
    fresh = proving(ALICE, AuthMethod.OIDC, 1)  # a passkey-signed review: tests/unit/test_passkeys.py
    assert workflow.review_refusal(record, fresh, now, ReviewDecision.APPROVE) is None


def test_the_review_queue_asks_the_workflow_rules() -> None:
    record, now = submit(on_behalf_of=OWNER.id), T0 + timedelta(minutes=1)
    assert workflow.may_review(record, OWNER, now)  # may deny, so it is offered
    assert isinstance(
        workflow.review_refusal(record, OWNER, now, ReviewDecision.APPROVE), workflow.OnBehalfOfCannotApprove
    )
    assert workflow.review_refusal(record, OWNER, now, ReviewDecision.DENY) is None
    for outsider in (AGENT, OTHER_AGENT, ERIN):
        assert not workflow.may_review(record, outsider, now)
    two_from_sre = review_verdict(route(Requirement(groups=("sre",), count=2)))
    approved_once = approve(submit(two_from_sre), ALICE)
    assert not workflow.may_review(approved_once, ALICE, now)  # already approved these params
    assert workflow.may_review(approved_once, BOB, now)
    assert not workflow.may_review(record, ALICE, record.expires_at or now)  # nothing after expiry
