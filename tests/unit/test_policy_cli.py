"""`keyturn policy check/explain/test` through the installed entry point and typer's runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyturn.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
KEYTURN = Path(sys.executable).parent / "keyturn"
runner = CliRunner()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KEYTURN), "policy", *args], capture_output=True, text=True, timeout=60, env={"COLUMNS": "200"}
    )


def test_check_the_example_policy_through_the_real_entry_point() -> None:
    done = run("check", str(EXAMPLES / "policy.yaml"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: 17 rules, revision sha256:")


def test_the_example_cases_pass_through_the_real_entry_point() -> None:
    done = run("test", str(EXAMPLES / "policy.yaml"), "--cases", str(EXAMPLES / "policy-tests.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    passed = int(last.split()[0])
    assert last == f"{passed} passed, 0 failed" and passed >= 15


def test_check_reports_every_problem_one_per_line_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "defaults: {approvers: [security]}\nrules:\n  - {name: a, decision: deny}\n"
        "  - {name: b, decision: review, when: 'params.x >'}\n"
    )
    done = run("check", str(bad))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0] == f"{bad}:3:5: rule 'a': a deny rule needs a `reason` (the requester is told why)"
    assert lines[1].startswith(f"{bad}:4:50: `when` is not valid CEL: Syntax error")
    assert lines[2] == "2 problems"
    assert "Traceback" not in done.stderr


def test_explain_shows_every_rule_and_the_route() -> None:
    result = runner.invoke(
        app,
        [
            "policy",
            "explain",
            str(EXAMPLES / "policy.yaml"),
            "--request",
            str(EXAMPLES / "requests/prod-export.json"),
            "--now",
            "2025-01-06T10:00:00Z",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "large or personal prod exports" in out and "`when` is true" in out
    assert "action is not *.read | *.list | *.get | *.describe" in out
    assert "verdict: review" in out
    assert "1 from data-owners and 1 from security" in out
    assert "critical" in out and "params.connection_string" in out


def test_explain_json_and_fail_closed_errors(tmp_path: Path) -> None:
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"action": "shell.exec", "params": {}}))
    result = runner.invoke(
        app, ["policy", "explain", str(EXAMPLES / "policy.yaml"), "--request", str(request), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["verdict"]["decision"] == "deny"
    wipes = next(r for r in data["rules"] if r["rule"] == "no filesystem wipes")
    assert wipes["matched"] is True and wipes["error"] == "no such key: command"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"action": "x",\n "params": [1}', "r.json:2:14: invalid JSON: Expecting ',' delimiter"),
        ('{"action": "x",\n "params": 5}', "r.json:2:12: params: expected a mapping, got int 5"),
        (
            '{"action": "x", "requester": {"kind": "robot"}}',
            "requester.kind: expected one of agent, human, got 'robot'",
        ),
        ('{"resource": "x"}', "the file: missing required key 'action'"),
        (
            '{"action": "x", "paramz": {}}',
            "unknown key 'paramz' in the file; allowed: action, resource, params",
        ),
    ],
)
def test_explain_rejects_bad_request_files_with_positions(
    tmp_path: Path, content: str, expected: str
) -> None:
    request = tmp_path / "r.json"
    request.write_text(content)
    result = runner.invoke(
        app, ["policy", "explain", str(EXAMPLES / "policy.yaml"), "--request", str(request)]
    )
    assert result.exit_code == 2
    assert expected in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_test_prints_a_diff_for_each_failure(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "- name: right\n  request: {action: db.read}\n  expect: {decision: allow}\n"
        "- name: wrong decision\n"
        "  request: {action: db.export, resource: 'postgres://prod/x', params: {rows: 5000}}\n"
        "  expect: {decision: allow, approvers: '2 from sre', tier: high}\n"
        "- name: wrong reason\n  now: '2025-01-03T09:00:00Z'\n"
        "  request: {action: k8s.apply, context: {environment: prod}}\n"
        "  expect: {decision: deny, reason_contains: 'holiday'}\n"
    )
    result = runner.invoke(app, ["policy", "test", str(EXAMPLES / "policy.yaml"), "--cases", str(cases)])
    assert result.exit_code == 1
    out = result.output
    assert f"FAIL wrong decision ({cases}:4)" in out
    assert "- expected: allow" in out and "+ actual:   review" in out
    assert "- expected: 2 from sre" in out and "+ actual:   1 from data-owners and 1 from security" in out
    assert "- expected: high" in out and "+ actual:   critical" in out
    assert f"FAIL wrong reason ({cases}:7)" in out and "Friday change freeze" in out
    assert "FAIL right" not in out
    assert out.strip().splitlines()[-1] == "1 passed, 2 failed"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("- name: a\n  request: {action: x}\n", ":1:3: [0]: missing required key 'expect'"),
        (
            "cases:\n  - name: a\n    request: {action: x}\n    expect: {decision: nope}\n",
            ":4:24: cases[0].expect.decision: expected one of allow, deny, review, got 'nope'",
        ),
        (
            "- name: a\n  request: {action: x}\n  expect: {decision: review, approvers: 'two from sre'}\n",
            ":3:41: [0].expect.approvers: expected approvers like '2 from sre and 1 from security'",
        ),
        (
            "- name: a\n  request: {action: x}\n  expect: {decision: allow, tire: x}\n",
            ":3:29: unknown key 'tire' in [0].expect; allowed: decision, tier, approvers",
        ),
        (
            "- name: a\n  now: yesterday\n  request: {action: x}\n  expect: {decision: allow}\n",
            ":2:8: [0].now: expected an ISO 8601 time",
        ),
        ("just a string\n", ":1:1: a cases file is a list of cases"),
        ("- [unclosed\n", ":2:1: YAML syntax error"),
    ],
)
def test_malformed_cases_files_are_errors_with_positions(tmp_path: Path, content: str, expected: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(content)
    result = runner.invoke(
        app, ["policy", "test", str(EXAMPLES / "policy.yaml"), "--cases", str(cases)], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 2, result.output
    assert f"{cases}{expected}" in result.output


def test_bad_now_option() -> None:
    result = runner.invoke(
        app,
        [
            "policy",
            "explain",
            str(EXAMPLES / "policy.yaml"),
            "--request",
            str(EXAMPLES / "requests/mcp-commit.json"),
            "--now",
            "friday",
        ],
    )
    assert result.exit_code == 2
    assert "--now: expected an ISO 8601 time" in result.output


def test_several_policy_files_on_the_command_line(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "rules:\n  - {name: payments, match: {action: 'payments.*'}, decision: deny, reason: closed}\n"
    )
    done = run("check", str(EXAMPLES / "policy.yaml"), str(extra))
    assert done.returncode == 0 and done.stdout.startswith("OK: 18 rules")
