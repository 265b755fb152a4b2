"""A grant binds its holder (issue #13 §4): the requester by default, or the executors a policy names."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyturn import workflow
from keyturn.model import (
    ActionRequest,
    Decision,
    EventType,
    Principal,
    PrincipalKind,
    RequestRecord,
    Requirement,
    ReviewDecision,
    Route,
    Status,
    Verdict,
)
from keyturn.policy import PolicyError, load_policy

T0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
AGENT = Principal(id="agent:deploy-bot", kind=PrincipalKind.AGENT, groups=frozenset({"bots"}))
THIEF = Principal(id="agent:other-bot", kind=PrincipalKind.AGENT, groups=frozenset({"bots"}))
RUNNER = Principal(id="agent:runner", kind=PrincipalKind.AGENT)
CI_JOB = Principal(id="agent:ci-job-7", kind=PrincipalKind.AGENT, groups=frozenset({"ci"}))


def allowed(executors: tuple[str, ...] = ()) -> RequestRecord:
    request = ActionRequest(
        action="db.export", resource="postgres://prod/x", params={"rows": 1}, requester=AGENT
    )
    verdict = Verdict(decision=Decision.ALLOW, policy_revision="r", executors=executors)
    return workflow.submit("req_1", request, verdict, T0, "gr_1").record


def approved(executors: tuple[str, ...]) -> RequestRecord:
    route = Route(requirements=(Requirement(groups=("sre",)),), ttl=timedelta(hours=1), executors=executors)
    request = ActionRequest(action="db.export", requester=AGENT)
    verdict = Verdict(decision=Decision.REVIEW, route=route, policy_revision="r")
    record = workflow.submit("req_2", request, verdict, T0, "gr_x").record
    alice = Principal(id="user:alice@example.com", kind=PrincipalKind.HUMAN, groups=frozenset({"sre"}))
    return workflow.review(record, alice, ReviewDecision.APPROVE, "", T0, grant_id="gr_2").record


def presented(record: RequestRecord) -> workflow.GrantPresentation:
    assert record.grant is not None
    return workflow.GrantPresentation(
        grant_id=record.grant.id,
        request_id=record.id,
        action=record.request.action,
        resource=record.request.resource,
        params_digest=record.grant.params_digest,
    )


def consume(record: RequestRecord, who: Principal) -> workflow.Transition:
    return workflow.consume_grant(record, presented(record), who, T0 + timedelta(seconds=5))


def test_a_grant_binds_its_requester_by_default() -> None:
    record = allowed()
    with pytest.raises(workflow.GrantNotHolder) as caught:
        consume(record, THIEF)  # same group, valid grant: still not the holder
    refusal = caught.value.refusal
    assert refusal.record.status is Status.ALLOWED and refusal.record.grant == record.grant
    assert refusal.record.version == record.version + 1 and refusal.record.executor is None
    (event,) = refusal.events
    assert event.type is EventType.GRANT_REFUSED and event.actor == "agent:other-bot"
    assert event.payload["presented_by"] == "agent:other-bot"
    assert event.payload["bound_to"] == ["agent:deploy-bot"]
    assert "may not consume" in event.payload["reason"]
    # the requester, under any spelling of its id, consumes it
    same = Principal(id="agent:Deploy-Bot", kind=PrincipalKind.AGENT)
    assert consume(record, same).record.status is Status.EXECUTING


def test_named_executors_consume_instead_of_the_requester() -> None:
    record = approved(("agent:runner", "group:ci"))
    assert consume(record, RUNNER).record.executor == "agent:runner"
    assert consume(record, CI_JOB).record.executor == "agent:ci-job-7"
    for outsider in (AGENT, THIEF):
        with pytest.raises(workflow.GrantNotHolder) as caught:
            consume(record, outsider)
        assert caught.value.refusal.events[0].payload["bound_to"] == ["agent:runner", "group:ci"]


def test_the_holder_check_comes_before_anything_else_about_the_grant() -> None:
    """A stranger learns nothing (consumed? expired?) and every presentation by one is ledgered."""
    record = consume(allowed(), AGENT).record
    with pytest.raises(workflow.GrantNotHolder):
        consume(record, THIEF)
    with pytest.raises(workflow.GrantAlreadyConsumed):
        consume(record, AGENT)


# --- policy -------------------------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return load_policy([path])


def test_policy_executors_on_rules_and_tiers(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
        defaults: {approvers: [security]}
        tiers:
          deploys: {quorum: 1, approvers: [sre], executors: [agent:Runner]}
        rules:
          - {name: deploy, match: {action: deploy}, decision: review, tier: deploys}
          - name: own runner
            match: {action: deploy.own}
            decision: review
            tier: deploys
            executors: group:ci
          - {name: reads, match: {action: x.read}, decision: allow, executors: [group:ci, agent:b]}
          - {name: reads too, match: {action: x.read}, decision: allow, executors: [agent:a]}
        """,
    )
    now = T0

    def verdict(action: str) -> Verdict:
        return policy.evaluate(ActionRequest(action=action, requester=AGENT), now)  # type: ignore[attr-defined,no-any-return]

    assert verdict("deploy").grant_executors == ("agent:runner",)  # canonical form, from the tier
    assert verdict("deploy.own").grant_executors == ("group:ci",)  # the rule's own replaces the tier's
    assert verdict("x.read").grant_executors == ("agent:a", "agent:b", "group:ci")  # matching rules unite
    assert verdict("other").grant_executors == ()  # the requester


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('"runner"', "an executor is a principal id (agent:NAME) or group:NAME"),
        ('"group:"', "an executor group is group:NAME"),
        ('"agent:run\\u200bner"', "U+200B"),
        ("42", "expected a string"),
    ],
)
def test_bad_executor_entries_are_load_errors_with_file_and_line(
    tmp_path: Path, entry: str, message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "defaults: {approvers: [security]}\n"
        "rules:\n"
        "  - name: a\n"
        "    decision: allow\n"
        f"    executors: [agent:ok, {entry}]\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy([path])
    (problem,) = caught.value.problems
    assert (problem.file, problem.line) == (str(path), 5)
    assert "rules[0].executors[1]" in problem.message and message in problem.message


def test_deny_rules_take_no_executors(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "defaults: {approvers: [security]}\n"
        "rules:\n"
        "  - {name: a, decision: deny, reason: never, executors: [agent:x]}\n"
    )
    with pytest.raises(PolicyError, match=r"policy.yaml:3:.*`executors` does not apply to deny rules"):
        load_policy([path])
