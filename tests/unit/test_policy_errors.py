"""Every load error names file, line, column and what was expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from keyturn.policy import PolicyError, Problem, load_policy

OK_DEFAULTS = "defaults: {approvers: [security]}\n"


def problems(tmp_path: Path, text: str, name: str = "p.yaml") -> list[Problem]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    with pytest.raises(PolicyError) as caught:
        load_policy([path])
    for problem in caught.value.problems:
        assert problem.file == str(path)
    return caught.value.problems


def one(tmp_path: Path, text: str) -> tuple[int, int, str]:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0].line, found[0].column, found[0].message


def test_yaml_syntax_error(tmp_path: Path) -> None:
    line, column, message = one(tmp_path, "rules:\n  - name: a\n    match: {action: [x\n")
    assert (line, column) == (4, 1)
    assert message.startswith("YAML syntax error:") and "expected ',' or ']'" in message


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - name: a\n    name: b\n    decision: allow\n") == (
        4,
        5,
        "YAML syntax error: duplicate key 'name' (first given at line 3)",
    )


def test_unknown_key_names_the_allowed_ones(tmp_path: Path) -> None:
    missing, unknown = problems(tmp_path, OK_DEFAULTS + "rules:\n  - name: a\n    decison: allow\n")
    assert missing == Problem(unknown.file, 3, 5, "rules[0]: missing required key 'decision'")
    line, column, message = unknown.line, unknown.column, unknown.message
    assert (line, column) == (4, 5)
    assert message.startswith("unknown key 'decison' in rules[0]; allowed: require, quorum, approvers")
    assert "decision" in message and "when" in message
    line, column, message = one(
        tmp_path, OK_DEFAULTS + "rules:\n  - name: a\n    decision: allow\n    match: {acton: x}\n"
    )
    assert (line, column, message) == (
        5,
        13,
        "unknown key 'acton' in rules[0].match; allowed: action, resource, requester",
    )
    assert one(tmp_path, "defaults: {approvers: [x], tll: 1h}\n")[2] == (
        "unknown key 'tll' in defaults; allowed: decision, approvers, quorum, ttl, grant_ttl, notify, reason"
    )


def test_wrong_types(tmp_path: Path) -> None:
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - name: a\n    decision: allow\n    when: 5\n") == (
        5,
        11,
        "rules[0].when: expected a string, got int 5",
    )
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: review, quorum: two}\n") == (
        3,
        41,
        "rules[0].quorum: expected an integer, got str 'two'",
    )
    assert one(tmp_path, OK_DEFAULTS + "rules: {a: 1}\n") == (2, 8, "rules: expected a list, got a mapping")
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: review, step_up: yes please}\n")[
        2
    ] == ("rules[0].step_up: expected true or false, got str 'yes please'")
    assert one(tmp_path, "- a\n- b\n") == (
        1,
        1,
        "a policy file is a mapping with version, defaults, tiers, rules",
    )


def test_missing_required_key(tmp_path: Path) -> None:
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - {name: a}\n") == (
        3,
        5,
        "rules[0]: missing required key 'decision'",
    )


def test_bad_glob(tmp_path: Path) -> None:
    assert one(
        tmp_path,
        OK_DEFAULTS + 'rules:\n  - {name: a, decision: allow, match: {action: ["ok.*", "db.[ab"]}}\n',
    ) == (3, 57, "rules[0].match.action[1]: pattern 'db.[ab' has an unclosed '[' at offset 3")
    assert one(tmp_path, OK_DEFAULTS + 'rules:\n  - {name: a, decision: allow, match: {resource: ""}}\n')[
        2
    ] == ("rules[0].match.resource[0]: a pattern must not be empty")


def test_cel_that_does_not_compile_points_into_the_expression(tmp_path: Path) -> None:
    line, column, message = one(
        tmp_path, OK_DEFAULTS + "rules:\n  - name: a\n    decision: allow\n    when: 'params.x +* 2'\n"
    )
    assert (line, column) == (5, 22)  # the `*`: column of the quote (11) + 1 + its offset (10)
    assert message.startswith("`when` is not valid CEL: Syntax error: extraneous input '*'")
    text = (
        OK_DEFAULTS
        + "rules:\n  - name: a\n    decision: allow\n    when: |\n      params.x > 1\n        && nope == 2\n"
    )
    assert one(tmp_path, text) == (
        7,
        12,
        "unknown variable 'nope' in `when`; the variables are action, context, now, on_behalf_of,"
        " on_behalf_of_verified, params, requester, resource",
    )
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: allow, when: ''}\n")[2] == (
        "`when` is empty; remove it or give a CEL expression"
    )


def test_macro_variables_are_not_unknown(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        OK_DEFAULTS + "rules:\n  - {name: a, decision: allow, when: \"params.tags.exists(t, t == 'pii')\"}\n"
    )
    assert len(load_policy([path]).rules) == 1


def test_unknown_tier(tmp_path: Path) -> None:
    assert one(
        tmp_path,
        OK_DEFAULTS + "tiers: {high: {quorum: 1}}\nrules:\n  - {name: a, decision: review, tier: hgh}\n",
    ) == (4, 39, "unknown tier 'hgh' (tiers: high)")


def test_duplicate_rule_names_within_and_across_files(tmp_path: Path) -> None:
    assert one(
        tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: allow}\n  - {name: a, decision: allow}\n"
    ) == (4, 12, f"duplicate rule name 'a' (first defined at {tmp_path / 'p.yaml'}:3)")
    (tmp_path / "one.yaml").write_text(OK_DEFAULTS + "rules:\n  - {name: shared, decision: allow}\n")
    (tmp_path / "two.yaml").write_text(
        "rules:\n  - {name: other, decision: allow}\n  - {name: shared, decision: allow}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy([tmp_path / "one.yaml", tmp_path / "two.yaml"])
    (problem,) = caught.value.problems
    assert problem == Problem(
        str(tmp_path / "two.yaml"),
        3,
        12,
        f"duplicate rule name 'shared' (first defined at {tmp_path / 'one.yaml'}:3)",
    )


def test_defaults_and_tiers_conflicts_across_files(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text(OK_DEFAULTS + "tiers:\n  high: {approvers: [sre]}\n")
    (tmp_path / "two.yaml").write_text(
        "defaults: {decision: deny, reason: x}\ntiers:\n  high: {approvers: [ops]}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy([tmp_path / "one.yaml", tmp_path / "two.yaml"])
    two = str(tmp_path / "two.yaml")
    assert caught.value.problems == [
        Problem(
            two,
            1,
            1,
            f"defaults are already given in {tmp_path / 'one.yaml'}:1; only one policy file may set defaults",
        ),
        Problem(two, 3, 3, f"tier 'high' is already defined at {tmp_path / 'one.yaml'}:3"),
    ]


def test_decision_must_be_allow_deny_or_review(tmp_path: Path) -> None:
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: maybe}\n") == (
        3,
        25,
        "rules[0].decision: expected one of allow, deny, review, got 'maybe'",
    )


def test_deny_needs_a_reason(tmp_path: Path) -> None:
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: deny}\n") == (
        3,
        5,
        "rule 'a': a deny rule needs a `reason` (the requester is told why)",
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5x", "rules[0].ttl: expected a duration like 30s, 5m, 1h30m or 2d, got '5x'"),
        ("30", "rules[0].ttl: a duration needs a unit (s, m, h, d): write 30s or 30m, not 30"),
        ("0s", "rules[0].ttl: a duration must be longer than zero, got '0s'"),
        ("30m1h", "rules[0].ttl: expected a duration like 30s, 5m, 1h30m or 2d, got '30m1h'"),
    ],
)
def test_bad_duration(tmp_path: Path, value: str, message: str) -> None:
    assert one(tmp_path, OK_DEFAULTS + f"rules:\n  - name: a\n    decision: review\n    ttl: {value}\n") == (
        5,
        10,
        message,
    )


def test_review_rule_without_approvers_anywhere(tmp_path: Path) -> None:
    text = (
        "defaults: {decision: deny, reason: closed}\ntiers: {t: {ttl: 5m}}\n"
        "rules:\n  - {name: a, decision: review, tier: t}\n"
    )
    assert one(tmp_path, text) == (
        4,
        5,
        "rule 'a': a review rule needs approvers: give `require`, `quorum` with `approvers`,"
        " a `tier` that has them, or defaults.approvers",
    )


def test_default_review_needs_default_approvers(tmp_path: Path) -> None:
    line, column, message = one(tmp_path, "rules:\n  - {name: a, decision: allow}\n")
    assert (line, column) == (1, 1)
    assert message.startswith("defaults.approvers is required")


def test_route_keys_on_allow_and_deny_rules_are_mistakes(tmp_path: Path) -> None:
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: allow, approvers: [sre]}\n") == (
        3,
        32,
        "rule 'a': `approvers` only applies to review rules",
    )
    assert one(
        tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: deny, reason: r, secrets: [X]}\n"
    ) == (3, 42, "rule 'a': `secrets` does not apply to deny rules")


def test_require_and_quorum_together(tmp_path: Path) -> None:
    text = OK_DEFAULTS + "rules:\n  - {name: a, decision: review, require: [{groups: [x]}], quorum: 2}\n"
    line, column, message = one(tmp_path, text)
    assert (line, column) == (3, 59)
    assert message.startswith("give either `require` or `quorum`/`approvers`, not both")


def test_editable_and_redact_paths(tmp_path: Path) -> None:
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: review, editable: [rows]}\n")[2] == (
        "rules[0].editable[0]: an editable field is a dotted path under params, like params.rows; got 'rows'"
    )
    assert one(tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: review, redact: [secret]}\n")[
        2
    ].startswith("rules[0].redact[0]: a redacted field is a dotted path under params or context")


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy([tmp_path / "nope.yaml"])
    assert (
        str(caught.value) == f"{tmp_path / 'nope.yaml'}:1:1: cannot read the file: No such file or directory"
    )
    (tmp_path / "bin.yaml").write_bytes(b"rules: [\xff]\n")
    with pytest.raises(PolicyError) as caught:
        load_policy([tmp_path / "bin.yaml"])
    assert "is not UTF-8" in str(caught.value)


def test_several_problems_are_all_reported_one_line_each(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        OK_DEFAULTS + "rules:\n  - {name: a, decision: deny}\n  - {name: b, decision: review, tier: nope}\n"
        "  - {name: c, decision: allow, when: 'x +'}\n",
    )
    assert [p.line for p in found] == [3, 4, 5]
    error = PolicyError(found)
    assert str(error).count("\n") == 2
    assert all(line.startswith(f"{tmp_path / 'p.yaml'}:") for line in str(error).splitlines())


def test_non_string_mapping_keys(tmp_path: Path) -> None:
    line, column, message = one(tmp_path, OK_DEFAULTS + "rules:\n  - {name: a, decision: allow, on: 1}\n")
    assert (line, column) == (3, 32)
    assert "a mapping key must be a string, got True (quote it)" in message
