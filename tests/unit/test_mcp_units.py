"""The proxy's small pure parts and its command line: naming, the --hide-denied rule, input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyturn.cli import app
from keyturn.mcp import action_for, denied_outright, resource_for
from keyturn.mcp.gating import describe_wait
from keyturn.mcp.naming import InvalidServerName, check_server_name, tool_segment
from keyturn.mcp.upstream import parse_env, parse_header


@pytest.mark.parametrize(
    ("tool", "action"),
    [
        ("git_commit", "mcp.git.git_commit"),
        ("admin.users.list", "mcp.git.admin.users.list"),  # dots stay: `*.list` rules apply
        ("repos/create", "mcp.git.repos_create"),  # '/' is not allowed in an action
        ("..weird..", "mcp.git.weird"),
        ("日本", "mcp.git.__"),
    ],
)
def test_action_names_are_always_valid(tool: str, action: str) -> None:
    assert action_for("git", tool) == action
    assert resource_for("git", tool) == f"mcp://git/{tool}"  # the resource keeps the exact tool name


def test_tool_segment_never_empty() -> None:
    assert tool_segment("...") == "_"


@pytest.mark.parametrize("name", ["", "a.b", "with space", "x/y"])
def test_server_names_that_cannot_prefix_an_action_are_refused(name: str) -> None:
    with pytest.raises(InvalidServerName, match="--name"):
        check_server_name(name)


def rule(decision: str, why: str = "matches action mcp.git.*", **extra: object) -> dict[str, object]:
    return {"rule": "r", "decision": decision, "matched": True, "why": why, **extra}


def test_hidden_only_for_an_unconditional_deny() -> None:
    assert denied_outright({"decision": "deny", "rules": [rule("deny")]})
    # a deny that depends on `when` may not hold for a real call
    assert not denied_outright(
        {"decision": "deny", "rules": [rule("deny", "matches action x; `when` is true")]}
    )
    # a `when` that failed to evaluate denies (fail closed) but says nothing about other calls
    assert not denied_outright({"decision": "deny", "rules": [rule("deny", error="no such key: rows")]})
    assert not denied_outright({"decision": "review", "rules": [rule("review")]})
    assert not denied_outright({"decision": "deny", "rules": []})  # e.g. defaults.decision: deny
    mixed = [rule("deny", "x; `when` is true"), rule("deny"), rule("allow")]
    assert denied_outright({"decision": "deny", "rules": mixed})


def test_wait_description_names_who_is_still_needed() -> None:
    text = describe_wait(
        {"id": "req_1", "status": "pending", "still_needed": ["1 from sre"], "expires_at": "T"}
    )
    assert text == "waiting for approval of keyturn request req_1: still needed 1 from sre (expires T)"
    assert describe_wait({"id": "req_1", "status": "approved"}) == "keyturn request req_1: approved"


def test_header_and_env_parsing() -> None:
    assert parse_header("Authorization: Bearer a:b") == ("Authorization", "Bearer a:b")
    assert parse_env("TOKEN=a=b") == ("TOKEN", "a=b")
    with pytest.raises(ValueError, match="--upstream-header"):
        parse_header("no colon")
    with pytest.raises(ValueError, match="--upstream-env"):
        parse_env("=x")


@pytest.mark.parametrize(
    ("args", "env", "message", "code"),
    [
        (["--", "x"], {"KEYTURN_API_KEY": "k"}, "--name is required", 2),
        (["--name", "a.b", "--", "x"], {"KEYTURN_API_KEY": "k"}, "--name 'a.b'", 2),
        (["--name", "git"], {"KEYTURN_API_KEY": "k"}, "no upstream", 2),
        (["--name", "git", "--upstream-url", "http://u", "--", "x"], {"KEYTURN_API_KEY": "k"}, "not both", 2),
        (
            ["--name", "n", "--upstream-url", "http://u", "--upstream-header", "bad"],
            {"KEYTURN_API_KEY": "k"},
            "'Name: value'",
            2,
        ),
        (
            ["--name", "n", "--upstream-url", "http://u", "--upstream-env", "A=b"],
            {"KEYTURN_API_KEY": "k"},
            "--upstream-env applies",
            2,
        ),
        (
            ["--name", "n", "--upstream-header", "A: b", "--", "x"],
            {"KEYTURN_API_KEY": "k"},
            "--upstream-header applies",
            2,
        ),
        (["--name", "n", "--listen", "nohost", "--", "x"], {"KEYTURN_API_KEY": "k"}, "--listen expects", 2),
        (["--name", "n", "--", "x"], {"KEYTURN_API_KEY": ""}, "set $KEYTURN_API_KEY", 2),
        (["--name", "n", "--api-key-env", "MY_KEY", "--", "x"], {"MY_KEY": ""}, "set $MY_KEY", 2),
        (["--name", "n", "--", "no-such-mcp-server-xyz"], {"KEYTURN_API_KEY": "k"}, "not found", 1),
    ],
)
def test_bad_command_lines_get_a_clear_error(
    args: list[str], env: dict[str, str], message: str, code: int
) -> None:
    result = CliRunner().invoke(app, ["mcp-proxy", *args], env=env)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_the_conditional_flag_of_the_verdict_decides_over_the_why_text() -> None:
    # what the policy engine says about the rule (it has a `when`) wins over how `why` is worded
    assert not denied_outright({"decision": "deny", "rules": [rule("deny", "reworded", conditional=True)]})
    assert denied_outright(
        {"decision": "deny", "rules": [rule("deny", "`when` mentioned", conditional=False)]}
    )


def test_the_policy_engine_marks_rules_with_a_when_as_conditional(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from keyturn.model import ActionRequest, Principal, PrincipalKind
    from keyturn.policy import load_policy

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "version: 1\ndefaults: {decision: allow}\nrules:\n"
        "  - {name: never, match: {action: mcp.git.git_reset}, decision: deny, reason: forbidden}\n"
        "  - name: not on fridays\n    match: {action: mcp.git.git_reset}\n"
        '    when: "now.getDayOfWeek() == 5"\n    decision: deny\n    reason: friday\n'
    )
    verdict = load_policy([policy_file]).evaluate(
        ActionRequest(
            action="mcp.git.git_reset", requester=Principal(id="agent:a", kind=PrincipalKind.AGENT)
        ),
        datetime(2030, 1, 4, tzinfo=UTC),  # a Friday: both rules match
    )
    flags = {m.rule: m.conditional for m in verdict.rules}
    assert flags == {"never": False, "not on fridays": True}
    assert denied_outright({"decision": "deny", "rules": [m.model_dump(mode="json") for m in verdict.rules]})
