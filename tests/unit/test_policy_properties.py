"""Properties of the decision procedure over generated policies and requests (hypothesis)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.model import ActionRequest, Principal, PrincipalKind, Verdict
from keyturn.policy import CompiledPolicy, load_policy

NOW = datetime(2025, 1, 3, 12, 0, tzinfo=UTC)
ACTIONS = ["a.b", "a.c", "b.b", "x.y.z", "k8s.apply"]
RESOURCES = ["", "prod/db", "dev/db"]
PATTERNS = ["a.b", "a.*", "*.b", "*", "?.b", "x.*.z", "k8s.*", "[ab].c"]
WHENS = [None, "params.n > 5", "params.missing > 1", "context.env == 'prod'", "now.getDayOfWeek() == 5"]
GROUPS = ["sre", "security", "data"]
DEFAULTS = {"decision": "review", "approvers": ["security"], "ttl": "1h"}
_counter = itertools.count()


@st.composite
def rules(draw: st.DrawFn, decisions: tuple[str, ...] = ("allow", "deny", "review")) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": f"r{next(_counter)}", "decision": draw(st.sampled_from(decisions))}
    match: dict[str, Any] = {}
    if draw(st.booleans()):
        match["action"] = draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2))
    if draw(st.booleans()):
        match["resource"] = draw(st.sampled_from(["prod/*", "dev/*", "*"]))
    if match:
        rule["match"] = match
    when = draw(st.sampled_from(WHENS))
    if when:
        rule["when"] = when
    if rule["decision"] == "deny":
        rule["reason"] = draw(st.sampled_from(["no", "never"]))
    if rule["decision"] == "review":
        if draw(st.booleans()):
            rule["require"] = [
                {
                    "groups": draw(st.lists(st.sampled_from(GROUPS), min_size=1, max_size=2, unique=True)),
                    "count": draw(st.integers(1, 2)),
                }
                for _ in range(draw(st.integers(1, 2)))
            ]
        if draw(st.booleans()):
            rule["ttl"] = draw(st.sampled_from(["5m", "30m", "2h"]))
        if draw(st.booleans()):
            rule["editable"] = [draw(st.sampled_from(["params.n", "params.m"]))]
    return rule


requests = st.builds(
    lambda action, resource, n, env: ActionRequest(
        action=action,
        resource=resource,
        params={"n": n},
        context={"env": env},
        requester=Principal(id="agent:p", kind=PrincipalKind.AGENT),
    ),
    st.sampled_from(ACTIONS),
    st.sampled_from(RESOURCES),
    st.integers(0, 10),
    st.sampled_from(["prod", "dev"]),
)


def compile_rules(directory: Path, rule_list: list[dict[str, Any]]) -> CompiledPolicy:
    path = directory / f"p{next(_counter)}.yaml"
    path.write_text(yaml.safe_dump({"defaults": DEFAULTS, "rules": rule_list}))
    return load_policy([path])


def summary(verdict: Verdict) -> tuple[Any, ...]:
    route = verdict.route
    return (
        verdict.decision,
        verdict.reason and frozenset(verdict.reason.split("; ")),
        frozenset(verdict.matched_rule_names),
        route and frozenset(route.requirements),
        route and route.ttl,
        route and route.tier,
        route and frozenset(route.editable),
    )


SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(
    base=st.lists(rules(), max_size=6),
    extra=rules(decisions=("deny", "review")),
    probes=st.lists(requests, min_size=1, max_size=8),
)
def test_adding_a_deny_or_review_rule_never_makes_a_decision_less_restrictive(
    tmp_path: Path, base: list[dict[str, Any]], extra: dict[str, Any], probes: list[ActionRequest]
) -> None:
    before = compile_rules(tmp_path, base)
    after = compile_rules(tmp_path, [*base, extra])
    for request in probes:
        old, new = before.evaluate(request, NOW), after.evaluate(request, NOW)
        assert new.decision.strictness >= old.decision.strictness, (request, old, new)
        if old.decision.strictness == new.decision.strictness == 1 and old.rules:
            # among matching review rules requirements only ever add up
            assert old.route is not None and new.route is not None
            assert set(old.route.requirements) <= set(new.route.requirements)
            assert new.route.ttl <= old.route.ttl


@SETTINGS
@given(
    rule_list=st.lists(rules(), min_size=1, max_size=7),
    order=st.randoms(),
    probes=st.lists(requests, min_size=1, max_size=8),
)
def test_rule_order_never_changes_the_verdict(
    tmp_path: Path, rule_list: list[dict[str, Any]], order: Any, probes: list[ActionRequest]
) -> None:
    shuffled = list(rule_list)
    order.shuffle(shuffled)
    first, second = compile_rules(tmp_path, rule_list), compile_rules(tmp_path, shuffled)
    for request in probes:
        assert summary(first.evaluate(request, NOW)) == summary(second.evaluate(request, NOW))


@SETTINGS
@given(rule_list=st.lists(rules(), min_size=1, max_size=7), probes=st.lists(requests, min_size=1, max_size=8))
def test_explain_agrees_with_evaluate_and_memoised_answers_are_stable(
    tmp_path: Path, rule_list: list[dict[str, Any]], probes: list[ActionRequest]
) -> None:
    policy = compile_rules(tmp_path, rule_list)
    for request in probes:
        verdict = policy.evaluate(request, NOW)
        explanation = policy.explain(request, NOW)
        assert {e.rule for e in explanation.rules if e.matched} == set(verdict.matched_rule_names)
        assert policy.evaluate(request, NOW) == verdict
