"""The decision procedure of DESIGN §2, rule by rule, on small policies written for each test."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyturn.model import ActionRequest, Decision, Escalation, Principal, PrincipalKind, Requirement
from keyturn.policy import CompiledPolicy, PolicyError, PolicyHolder, load_policy

MONDAY = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)
FRIDAY = datetime(2025, 1, 3, 10, 0, tzinfo=UTC)
AGENT = Principal(id="agent:bot", kind=PrincipalKind.AGENT, groups=frozenset({"bots"}))

HEADER = """\
defaults: {approvers: [security], ttl: 1h}
tiers:
  high: {quorum: 1, approvers: [sre], ttl: 30m, notify: ["slack:#ops"]}
  critical:
    require: [{groups: [sre], count: 2}, {groups: [security], count: 1}]
    ttl: 15m
    step_up: true
    notify: ["teams:oncall"]
    escalate: [{after: 5m, notify: ["teams:oncall"]}]
"""


def policy(tmp_path: Path, rules: str, header: str = HEADER, name: str = "policy.yaml") -> CompiledPolicy:
    path = tmp_path / name
    path.write_text(header + "rules:\n" + textwrap.indent(textwrap.dedent(rules), "  "))
    return load_policy([path])


def req(action: str, resource: str = "", requester: Principal = AGENT, **kw: Any) -> ActionRequest:
    return ActionRequest(action=action, resource=resource, requester=requester, **kw)


def test_every_matching_rule_counts_and_deny_beats_review_beats_allow(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - {name: allow all, decision: allow}
        - {name: review k8s, match: {action: "k8s.*"}, decision: review, tier: high}
        - {name: deny delete, match: {action: k8s.delete}, decision: deny, reason: no deletes}
        """,
    )
    assert p.evaluate(req("db.read"), MONDAY).decision is Decision.ALLOW
    review = p.evaluate(req("k8s.apply"), MONDAY)
    assert review.decision is Decision.REVIEW
    assert review.matched_rule_names == ("allow all", "review k8s")
    deny = p.evaluate(req("k8s.delete"), MONDAY)
    assert deny.decision is Decision.DENY
    assert deny.reason == "no deletes"
    assert deny.matched_rule_names == ("allow all", "review k8s", "deny delete")
    assert all(m.matched for m in deny.rules)
    assert deny.policy_revision == p.revision


def test_review_requirements_add_up_identical_ones_once_shortest_ttl_unions(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - name: a
          match: {action: db.export}
          decision: review
          approvers: [data-owners]
          ttl: 4h
          grant_ttl: 10m
          redact: [params.dsn]
          editable: [params.rows]
          notify: ["slack:#data"]
          secrets: [DB_TOKEN]
        - name: b
          match: {action: db.export}
          decision: review
          tier: critical
          require: [{groups: [data-owners]}, {groups: [security]}]
          editable: [params.table]
          grant_ttl: 2m
        - name: c
          match: {action: db.export}
          decision: review
          tier: high
        """,
    )
    v = p.evaluate(req("db.export"), MONDAY)
    assert v.decision is Decision.REVIEW and v.route is not None
    route = v.route
    assert set(route.requirements) == {
        Requirement(groups=("data-owners",), count=1),
        Requirement(groups=("security",), count=1),
        Requirement(groups=("sre",), count=1),
    }
    assert route.ttl == timedelta(minutes=15)  # critical tier's ttl: the shortest
    assert route.grant_ttl == timedelta(minutes=2)
    assert route.tier == "critical"  # the last-declared (most severe) tier among the matches
    assert route.redact == ("params.dsn",)
    assert route.editable == ("params.rows", "params.table")
    assert route.notify == ("slack:#data", "slack:#ops", "teams:oncall")  # tier notify + rule notify
    assert route.step_up is True
    assert route.escalate == (Escalation(after=timedelta(minutes=5), notify=("teams:oncall",)),)
    assert route.secrets == ("DB_TOKEN",)


def test_different_counts_of_the_same_group_are_separate_requirements(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - {name: one, decision: review, approvers: [sre], quorum: 1}
        - {name: two, decision: review, approvers: [sre], quorum: 2}
        """,
    )
    route = p.evaluate(req("x"), MONDAY).route
    assert route is not None
    assert route.describe() == "2 from sre and 1 from sre"


def test_quorum_approvers_shorthand_equals_require(tmp_path: Path) -> None:
    short = policy(
        tmp_path, "- {name: r, decision: review, quorum: 2, approvers: [sre, ops]}\n", name="a.yaml"
    )
    long = policy(
        tmp_path, "- {name: r, decision: review, require: [{groups: [sre, ops], count: 2}]}\n", name="b.yaml"
    )
    a, b = short.evaluate(req("x"), MONDAY).route, long.evaluate(req("x"), MONDAY).route
    assert a is not None and b is not None
    assert a.requirements == b.requirements == (Requirement(groups=("sre", "ops"), count=2),)


def test_tier_gives_defaults_and_the_rule_replaces_them(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - {name: plain, match: {action: a}, decision: review, tier: critical}
        - name: own
          match: {action: b}
          decision: review
          tier: critical
          require: [{groups: [data-owners]}]
          ttl: 5m
          step_up: false
        - {name: quorum from tier, match: {action: c}, decision: review, tier: high, quorum: 3}
        """,
    )
    plain = p.evaluate(req("a"), MONDAY).route
    assert plain is not None
    assert plain.describe() == "2 from sre and 1 from security"
    assert (plain.ttl, plain.step_up, plain.tier) == (timedelta(minutes=15), True, "critical")
    own = p.evaluate(req("b"), MONDAY).route
    assert own is not None
    assert own.requirements == (Requirement(groups=("data-owners",), count=1),)
    assert (own.ttl, own.step_up) == (timedelta(minutes=5), False)
    assert own.escalate  # not replaced: inherited from the tier
    third = p.evaluate(req("c"), MONDAY).route
    assert third is not None and third.requirements == (Requirement(groups=("sre",), count=3),)


def test_review_without_rule_or_tier_approvers_falls_back_to_defaults(tmp_path: Path) -> None:
    p = policy(tmp_path, "- {name: r, decision: review}\n")
    route = p.evaluate(req("x"), MONDAY).route
    assert route is not None
    assert route.requirements == (Requirement(groups=("security",), count=1),)
    assert route.ttl == timedelta(hours=1)


@pytest.mark.parametrize(
    ("defaults", "decision"),
    [
        ("{approvers: [security]}", Decision.REVIEW),
        ("{decision: deny, reason: nope}", Decision.DENY),
        ("{decision: allow, grant_ttl: 1m}", Decision.ALLOW),
    ],
)
def test_unknown_actions_follow_defaults_decision(tmp_path: Path, defaults: str, decision: Decision) -> None:
    p = policy(
        tmp_path, "- {name: known, match: {action: known}, decision: allow}\n", f"defaults: {defaults}\n"
    )
    v = p.evaluate(req("unknown.action"), MONDAY)
    assert v.decision is decision
    assert v.rules == ()
    if decision is Decision.REVIEW:
        assert v.route is not None and v.route.describe() == "1 from security"
    if decision is Decision.DENY:
        assert v.reason == "nope"
    if decision is Decision.ALLOW:
        assert v.grant_ttl == timedelta(minutes=1)


def test_match_globs_cross_dots_and_lists_are_any_of(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - {name: star, match: {action: "mcp.*"}, decision: allow}
        - {name: suffix, match: {action: ["*.read", "*.list"]}, decision: allow}
        - {name: class, match: {action: "svc[0-9].op?"}, decision: allow}
        """,
        "defaults: {decision: deny, reason: default}\n",
    )
    assert p.evaluate(req("mcp.git.git_status"), MONDAY).matched_rule_names == ("star",)
    assert p.evaluate(req("db.users.read"), MONDAY).matched_rule_names == ("suffix",)
    assert p.evaluate(req("x.list"), MONDAY).matched_rule_names == ("suffix",)
    assert p.evaluate(req("svc7.opA"), MONDAY).matched_rule_names == ("class",)
    for action in ("mcp", "mcpx.y", "svcX.opA", "svc1.opAB", "db.readme", "MCP.git"):
        assert p.evaluate(req(action), MONDAY).decision is Decision.DENY, action


def test_all_match_keys_must_match(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - name: r
          match: {action: db.export, resource: "postgres://prod/*", requester: ["agent:etl-*", "group:data"]}
          decision: allow
        """,
        "defaults: {decision: deny, reason: default}\n",
    )
    etl = Principal(id="agent:etl-nightly", kind=PrincipalKind.AGENT)
    analyst = Principal(id="user:ann", kind=PrincipalKind.HUMAN, groups=frozenset({"data"}))
    other = Principal(id="agent:other", kind=PrincipalKind.AGENT, groups=frozenset({"database"}))
    assert p.evaluate(req("db.export", "postgres://prod/t", etl), MONDAY).decision is Decision.ALLOW
    assert p.evaluate(req("db.export", "postgres://prod/t", analyst), MONDAY).decision is Decision.ALLOW
    assert p.evaluate(req("db.export", "postgres://prod/t", other), MONDAY).decision is Decision.DENY
    assert p.evaluate(req("db.export", "postgres://dev/t", etl), MONDAY).decision is Decision.DENY
    assert p.evaluate(req("db.import", "postgres://prod/t", etl), MONDAY).decision is Decision.DENY


def test_when_sees_every_variable(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - name: all variables
          decision: allow
          when: >-
            action == 'db.export' && resource == 'r1' && params.rows == 5 && requester.id == 'agent:bot'
            && requester.kind == 'agent' && 'bots' in requester.groups && on_behalf_of == 'user:ann'
            && context.env == 'prod' && now.getDayOfWeek() == 1 && now.getHours() == 10
        """,
        "defaults: {decision: deny, reason: default}\n",
    )
    good = req("db.export", "r1", params={"rows": 5}, context={"env": "prod"}, on_behalf_of="user:ann")
    assert p.evaluate(good, MONDAY).decision is Decision.ALLOW
    assert p.evaluate(good, FRIDAY).decision is Decision.DENY
    assert p.evaluate(good.with_params({"rows": 6}), MONDAY).decision is Decision.DENY
    naive = MONDAY.replace(tzinfo=None)  # a naive time is taken as UTC
    assert p.evaluate(good, naive).decision is Decision.ALLOW


def test_change_freeze_on_friday(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - {name: applies, match: {action: "k8s.*"}, decision: review, tier: high}
        - name: change freeze
          match: {action: "k8s.*"}
          when: "context.environment == 'prod' && now.getDayOfWeek() == 5"
          decision: deny
          reason: Friday change freeze
        """,
    )
    prod = req("k8s.apply", context={"environment": "prod"})
    assert p.evaluate(prod, MONDAY).decision is Decision.REVIEW
    friday = p.evaluate(prod, FRIDAY)
    assert (friday.decision, friday.reason) == (Decision.DENY, "Friday change freeze")
    staging = req("k8s.apply", context={"environment": "staging"})
    assert p.evaluate(staging, FRIDAY).decision is Decision.REVIEW


@pytest.mark.parametrize(
    ("params", "context"),
    [({}, {}), ({"rows": "many"}, {}), ({"rows": 5000}, {"x": None})],
    ids=["missing key", "type error", "ok-but-other-rule"],
)
def test_when_failing_at_evaluation_fails_closed(
    tmp_path: Path, params: dict[str, Any], context: Any
) -> None:
    p = policy(
        tmp_path,
        """
        - {name: allow small, match: {action: db.export}, when: "params.rows < 100", decision: allow}
        - name: deny weekend
          match: {action: db.export}
          when: "context.x.weekend == true"
          decision: deny
          reason: no weekend exports
        - {name: review big, match: {action: db.export}, when: "params.rows > 1000", decision: review}
        """,
    )
    v = p.evaluate(req("db.export", params=params, context=context), MONDAY)
    # the deny rule's condition fails (no context.x.weekend) → it counts as matched: deny
    assert v.decision is Decision.DENY
    assert "no weekend exports" in (v.reason or "") and "fails closed" in (v.reason or "")
    by_name = {m.rule: m for m in v.rules}
    assert by_name["deny weekend"].error is not None and by_name["deny weekend"].matched
    assert "allow small" not in by_name  # an allow rule whose condition fails does not match
    if params.get("rows") != 5000:
        assert by_name["review big"].error is not None  # review fails closed too


def test_allow_rule_failing_closed_leaves_the_default(tmp_path: Path) -> None:
    p = policy(tmp_path, '- {name: small, when: "params.rows < 100", decision: allow}\n')
    v = p.evaluate(req("db.export"), MONDAY)
    assert v.decision is Decision.REVIEW and v.rules == ()
    explanation = p.explain(req("db.export"), MONDAY)
    (entry,) = explanation.rules
    assert not entry.matched and entry.error == "no such key: rows"


def test_when_must_be_boolean(tmp_path: Path) -> None:
    p = policy(tmp_path, '- {name: weird, when: "params.rows", decision: deny, reason: r}\n')
    v = p.evaluate(req("x", params={"rows": 3}), MONDAY)
    assert v.decision is Decision.DENY
    assert v.rules[0].error is not None and "true or false" in v.rules[0].error


def test_allow_carries_grant_ttl_and_secrets(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - {name: a, match: {action: "deploy.*"}, decision: allow, secrets: [DEPLOY_TOKEN], grant_ttl: 2m}
        - {name: b, match: {action: deploy.web}, decision: allow, secrets: [CDN_KEY]}
        """,
        "defaults: {approvers: [sre], grant_ttl: 30s}\n",
    )
    v = p.evaluate(req("deploy.web"), MONDAY)
    assert v.decision is Decision.ALLOW
    assert v.grant_ttl == timedelta(seconds=30)
    assert v.secrets == ("CDN_KEY", "DEPLOY_TOKEN")


def test_several_deny_reasons_are_joined(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - {name: a, decision: deny, reason: first}
        - {name: b, decision: deny, reason: second}
        - {name: c, decision: deny, reason: first}
        """,
    )
    assert p.evaluate(req("x"), MONDAY).reason == "first; second"


def test_explain_lists_every_rule_with_why_and_agrees_with_evaluate(tmp_path: Path) -> None:
    p = policy(
        tmp_path,
        """
        - {name: by action, match: {action: other}, decision: allow}
        - {name: by resource, match: {action: x, resource: "prod/*"}, decision: allow}
        - {name: by requester, match: {requester: "group:admins"}, decision: allow}
        - {name: false when, when: "params.n > 10", decision: review}
        - {name: broken when, when: "params.missing > 1", decision: review}
        - {name: hit, match: {action: x}, decision: review, tier: high}
        """,
    )
    explanation = p.explain(req("x", "dev/a", params={"n": 1}), MONDAY)
    rows = {e.rule: e for e in explanation.rules}
    assert [e.rule for e in explanation.rules] == [
        "by action",
        "by resource",
        "by requester",
        "false when",
        "broken when",
        "hit",
    ]
    assert rows["by action"].why == "action is not other"
    assert rows["by resource"].why == "resource is not prod/*"
    assert rows["by requester"].why == "requester is not group:admins"
    assert rows["false when"].why == "`when` is false" and not rows["false when"].matched
    assert rows["broken when"].matched and rows["broken when"].error == "no such key: missing"
    assert rows["hit"].matched and rows["hit"].why == "matches action x"
    assert explanation.verdict.matched_rule_names == ("broken when", "hit")
    assert rows["hit"].source.endswith("policy.yaml:17")  # 9 header lines, `rules:`, a blank line


def test_revision_changes_with_the_files(tmp_path: Path) -> None:
    first = policy(tmp_path, "- {name: a, decision: allow}\n")
    again = policy(tmp_path, "- {name: a, decision: allow}\n")
    changed = policy(tmp_path, "- {name: a, decision: deny, reason: x}\n")
    assert first.revision == again.revision
    assert first.revision.startswith("sha256:") and len(first.revision) == 71
    assert changed.revision != first.revision
    renamed = policy(tmp_path, "- {name: a, decision: allow}\n", name="other.yaml")
    assert renamed.revision != first.revision  # names are part of the digest


def test_reload_swaps_only_a_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(HEADER + "rules:\n  - {name: a, decision: allow}\n")
    holder = PolicyHolder([path])
    good = holder.current
    assert good.evaluate(req("x"), MONDAY).decision is Decision.ALLOW
    path.write_text(HEADER + "rules:\n  - {name: a, decision: allow\n")  # broken YAML
    with pytest.raises(PolicyError) as caught:
        holder.reload()
    assert caught.value.problems[0].file == str(path)
    assert holder.current is good
    path.write_text(HEADER + "rules:\n  - {name: a, decision: deny, reason: closed}\n")
    fresh = holder.reload()
    assert holder.current is fresh and fresh.revision != good.revision
    assert fresh.evaluate(req("x"), MONDAY).decision is Decision.DENY


def test_holder_raises_when_the_first_load_fails(tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        PolicyHolder([tmp_path / "missing.yaml"])


def test_several_files_load_as_one_policy(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        HEADER + "rules:\n  - {name: reads, match: {action: '*.read'}, decision: allow}\n"
    )
    (tmp_path / "team.yaml").write_text(
        "tiers:\n  team: {approvers: [team], ttl: 2h}\n"
        "rules:\n  - {name: team things, match: {action: 'team.*'}, decision: review, tier: team}\n"
    )
    p = load_policy([tmp_path / "base.yaml", tmp_path / "team.yaml"])
    assert [r.name for r in p.rules] == ["reads", "team things"]
    route = p.evaluate(req("team.deploy"), MONDAY).route
    assert route is not None and route.describe() == "1 from team" and route.tier == "team"


def test_the_index_does_not_change_answers(tmp_path: Path) -> None:
    # exact, prefix, suffix and unindexable patterns, checked against a brute-force fnmatch scan
    import fnmatch

    patterns = ["a.b", "a.*", "*.b", "*", "?.b", "[ab].c", "a*b", "*a*", "x.y.z", "x.*.z"]
    rules = "".join(
        f'- {{name: r{i}, match: {{action: "{p}"}}, decision: allow}}\n' for i, p in enumerate(patterns)
    )
    p = policy(tmp_path, rules, "defaults: {decision: deny, reason: d}\n")
    for action in ["a.b", "a.c", "b.b", "a", "ab", "x.y.z", "x.q.z", "c.c", "zzz", "a.b.b", ""]:
        expected = tuple(f"r{i}" for i, pat in enumerate(patterns) if fnmatch.fnmatchcase(action, pat))
        assert p.evaluate(req(action), MONDAY).matched_rule_names == expected, action
