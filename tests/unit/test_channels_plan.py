"""The outbox plan: which deliveries each transition causes (pure: no I/O, same transition -> same rows)."""

from __future__ import annotations

from datetime import timedelta

from conftest import RequestFactory
from keyturn import workflow
from keyturn.channels.plan import PlanConfig, plan, primary_event
from keyturn.model import ActionRequest, Escalation, EventType, ReviewDecision
from keyturn.redact import UNKEYED
from keyturn.store.outbox import Plan

CONFIG = PlanConfig(base_url="https://keyturn.example", redactor=UNKEYED, outcome_kind="slack")


def routed(
    factory: RequestFactory, notify: tuple[str, ...], escalate: tuple[Escalation, ...] = ()
) -> workflow.Transition:
    verdict = factory.review_verdict("sre", escalate=escalate)
    assert verdict.route is not None
    route = verdict.route.model_copy(update={"notify": notify})
    return factory.submit(verdict.model_copy(update={"route": route}))


def kinds(p: Plan) -> list[tuple[str, str, str]]:
    return [(r.kind, r.target, r.event_type) for r in p.rows]


def test_the_submit_posts_to_interactive_targets_and_sends_an_event_to_webhooks(
    factory: RequestFactory,
) -> None:
    submitted = routed(factory, ("slack:#ops", "webhook:siem"))
    p = plan(submitted, CONFIG)
    assert kinds(p) == [
        ("post", "slack:#ops", "request.pending"),
        ("event", "webhook:siem", "request.pending"),
    ]
    event = p.rows[1]
    assert event.payload is not None and event.payload["view"]["id"] == submitted.record.id
    assert event.payload["view"]["review_url"].startswith("https://keyturn.example/")
    assert all(r.due_at == submitted.record.created_at for r in p.rows)
    assert not p.cancel_escalations
    assert plan(submitted, CONFIG) == p  # deterministic: the ids are the idempotency keys


def test_allowed_and_denied_submits_notify_no_one(factory: RequestFactory) -> None:
    assert not plan(factory.submit(factory.allow_verdict()), CONFIG)


def test_escalation_steps_are_scheduled_at_submit_for_targets_not_yet_told(factory: RequestFactory) -> None:
    steps = (
        Escalation(after=timedelta(minutes=5), notify=("teams:oncall", "slack:#ops")),
        Escalation(after=timedelta(minutes=15), notify=("teams:oncall", "webhook:pager")),
    )
    submitted = routed(factory, ("slack:#ops",), steps)
    p = plan(submitted, CONFIG)
    created = submitted.record.created_at
    escalations = [(r.target, r.due_at - created, r.payload) for r in p.rows if r.kind == "escalate"]
    assert escalations == [
        ("teams:oncall", timedelta(minutes=5), {"level": 1}),
        ("webhook:pager", timedelta(minutes=15), {"level": 2}),
    ]


def test_a_review_updates_every_card_and_sends_one_event(factory: RequestFactory) -> None:
    steps = (Escalation(after=timedelta(minutes=5), notify=("teams:oncall",)),)
    submitted = routed(factory, ("slack:#ops", "webhook:siem"), steps)
    approved = workflow.review(
        submitted.record,
        factory.human("alice", "sre"),
        ReviewDecision.APPROVE,
        "ok",
        factory.tick(),
        grant_id=factory.grant_id(),
    )
    assert primary_event(e.type for e in approved.events) is EventType.APPROVED
    p = plan(approved, CONFIG)
    assert kinds(p) == [
        ("update", "slack:#ops", "request.approved"),
        ("update", "teams:oncall", "request.approved"),
        ("event", "webhook:siem", "request.approved"),
    ]
    assert [r.payload for r in p.rows[:2]] == [{"post_if_missing": True}, {"post_if_missing": False}]
    assert p.cancel_escalations  # the request is resolved: unsent escalations are void
    assert p.rows[2].payload is not None and p.rows[2].payload["view"]["status"] == "approved"


def test_the_outcome_goes_to_the_on_behalf_of_human_when_slack_is_configured(factory: RequestFactory) -> None:
    verdict = factory.review_verdict("sre")
    assert verdict.route is not None
    verdict = verdict.model_copy(
        update={"route": verdict.route.model_copy(update={"notify": ("slack:#ops",)})}
    )
    request = ActionRequest(
        action="db.export", requester=factory.agent, on_behalf_of="user:olivia@example.com"
    )
    submitted = workflow.submit("req_obo", request, verdict, factory.tick(), factory.grant_id())
    denied = workflow.review(
        submitted.record,
        factory.human("alice", "sre"),
        ReviewDecision.DENY,
        "no",
        factory.tick(),
        grant_id=factory.grant_id(),
    )
    assert ("outcome", "slack:@user:olivia@example.com", "request.denied") in kinds(plan(denied, CONFIG))
    without_slack = PlanConfig(base_url="https://keyturn.example", redactor=UNKEYED)
    assert all(r.kind != "outcome" for r in plan(denied, without_slack).rows)


def test_a_partial_review_does_not_resolve(factory: RequestFactory) -> None:
    verdict = factory.review_verdict("sre", count=2)
    assert verdict.route is not None
    route = verdict.route.model_copy(update={"notify": ("webhook:siem",)})
    submitted = factory.submit(verdict.model_copy(update={"route": route}))
    reviewed = workflow.review(
        submitted.record,
        factory.human("alice", "sre"),
        ReviewDecision.APPROVE,
        "",
        factory.tick(),
        grant_id=factory.grant_id(),
    )
    p = plan(reviewed, CONFIG)
    assert kinds(p) == [("event", "webhook:siem", "request.reviewed")] and not p.cancel_escalations


def test_the_escalated_transition_does_not_double_the_escalation_row(factory: RequestFactory) -> None:
    steps = (Escalation(after=timedelta(minutes=5), notify=("webhook:pager",)),)
    submitted = routed(factory, ("webhook:siem",), steps)
    escalated = workflow.escalate(submitted.record, submitted.record.created_at + timedelta(minutes=5))
    # webhook:pager gets its ESCALATE row (planned at submit), not a second event now
    assert kinds(plan(escalated, CONFIG)) == [("event", "webhook:siem", "request.escalated")]
    cancelled = workflow.cancel(escalated.record, factory.agent, escalated.record.updated_at)
    assert kinds(plan(cancelled, CONFIG)) == [
        ("event", "webhook:pager", "request.cancelled"),
        ("event", "webhook:siem", "request.cancelled"),
    ]
