"""`keyturn exec` against a real server, run as the real command: once when approved, never otherwise."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyturn.client import Client
from keyturn.commands.exec_ import UnrunnableCommand, approved_command
from support.live import LiveServer, free_port, keyturn_executable, start_server

AGENT = "agent:exec-bot"
ALICE = "user:alice@example.com"
SECRET_VALUE = "s3cr3t-deploy-token-value"

POLICY = """\
version: 1
defaults: {decision: review, approvers: [security], ttl: 1h}
rules:
  - name: free
    match: {action: "test.allow"}
    decision: allow
  - name: never
    match: {action: "test.deny"}
    decision: deny
    reason: no shells on Fridays
  - name: shell commands need an sre
    match: {action: "shell.exec"}
    decision: review
    quorum: 1
    approvers: [sre]
    editable: [params.argv, params.cwd, params.command]
  - name: deploys get the deploy token
    match: {action: "deploy.run"}
    decision: allow
    secrets: [DEPLOY_TOKEN]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("exec")
    secret_file = workdir / "deploy-token"
    secret_file.write_text(SECRET_VALUE + "\n", encoding="utf-8")
    live = start_server(
        workdir,
        policy=POLICY,
        settings={"timer_interval": 0.1, "secrets": {"DEPLOY_TOKEN": {"file": str(secret_file)}}},
    )
    try:
        yield live
    finally:
        live.stop()


def exec_args(action: str, *command: str, resource: str = "host://ci", timeout: float = 20) -> list[str]:
    return [
        keyturn_executable(),
        "exec",
        "--action",
        action,
        "--resource",
        resource,
        "--timeout",
        str(timeout),
        "--",
        *command,
    ]


def environment(server: LiveServer | None, url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env["KEYTURN_URL"] = url or (server.url if server else "")
    env["KEYTURN_API_KEY"] = server.tokens[AGENT] if server else "kt_nothing"
    env["NO_COLOR"] = "1"
    return env


def run_exec(
    server: LiveServer, action: str, *command: str, cwd: Path, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        exec_args(action, *command, **kwargs),
        env=environment(server),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def last_request(server: LiveServer, action: str) -> dict[str, Any]:
    with Client(server.url, server.tokens[AGENT]) as client:
        items = [r for r in client.list(limit=50)["items"] if r["action"] == action]
    return items[0]


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def test_an_allowed_command_runs_once_passes_its_exit_code_and_reports_a_digest(
    server: LiveServer, tmp_path: Path
) -> None:
    script = sh("echo out; echo err >&2; echo ran >> marker; exit 3")
    done = run_exec(server, "test.allow", *script, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "out\n" and "err\n" in done.stderr
    assert (tmp_path / "marker").read_text() == "ran\n"
    request = last_request(server, "test.allow")
    assert request["params"] == {"argv": script, "cwd": str(tmp_path), "command": shlex.join(script)}
    assert request["status"] == "failed" and request["result"]["detail"] == "exit code 3"
    assert request["result"]["output_digest"] == "sha256:" + hashlib.sha256(b"out\nerr\n").hexdigest()


def test_a_denied_command_never_runs_and_exits_77(server: LiveServer, tmp_path: Path) -> None:
    done = run_exec(server, "test.deny", "touch", "marker", cwd=tmp_path)
    assert done.returncode == 77
    assert "denied by policy (no shells on Fridays)" in done.stderr
    assert not (tmp_path / "marker").exists()


def _start(server: LiveServer, cwd: Path, *command: str, timeout: float = 20) -> subprocess.Popen[str]:
    return subprocess.Popen(
        exec_args("shell.exec", *command, timeout=timeout),
        env=environment(server),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _pending(server: LiveServer, marker: str) -> dict[str, Any]:
    """The pending shell.exec request whose argv mentions `marker` (each test uses its own)."""
    with server.client(ALICE) as alice:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for item in alice.list(status="pending")["items"]:
                if item["action"] == "shell.exec" and marker in " ".join(item["params"]["argv"]):
                    return dict(item)
            time.sleep(0.05)
    raise AssertionError("the request never became pending")


def test_a_reviewer_edit_runs_the_edited_argv_exactly(server: LiveServer, tmp_path: Path) -> None:
    child = _start(server, tmp_path, "touch", "asked-for")
    request = _pending(server, "asked-for")
    with server.client(ALICE) as alice:
        alice.review(request["id"], "approve", "only the safe one", {"argv": ["touch", "edited-instead"]})
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 0, stderr
    assert "only the safe one" in stderr and "edited" in stderr
    assert (tmp_path / "edited-instead").exists() and not (tmp_path / "asked-for").exists()


def test_a_reviewer_denial_prints_the_reason_and_nothing_runs(server: LiveServer, tmp_path: Path) -> None:
    child = _start(server, tmp_path, "touch", "denied-marker")
    request = _pending(server, "denied-marker")
    with server.client(ALICE) as alice:
        alice.review(request["id"], "deny", "use the [bold]staging[/bold] cluster")
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 77
    assert f"denied by {ALICE}: use the [bold]staging[/bold] cluster" in stderr
    assert not (tmp_path / "denied-marker").exists()


def test_no_decision_in_time_cancels_and_exits_75(server: LiveServer, tmp_path: Path) -> None:
    done = run_exec(server, "shell.exec", "touch", "late-marker", cwd=tmp_path, timeout=0.5)
    assert done.returncode == 75, done.stderr
    assert "no decision within 0.5s (--timeout); the request was cancelled" in done.stderr
    assert not (tmp_path / "late-marker").exists()
    assert last_request(server, "shell.exec")["status"] == "cancelled"


def test_a_brokered_secret_reaches_the_command_but_is_never_printed(
    server: LiveServer, tmp_path: Path
) -> None:
    # The command checks the secret against its digest, so the value itself is in no argv we could print.
    expected = hashlib.sha256(SECRET_VALUE.encode()).hexdigest()
    script = f'test "$(printf %s "$DEPLOY_TOKEN" | sha256sum | cut -d" " -f1)" = {expected} && echo token-ok'
    done = subprocess.run(
        exec_args("deploy.run", *sh(script)),
        env=environment(server),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "token-ok\n"
    # The secret is in neither our output, nor the request as the agent can read it, nor the server log.
    request = last_request(server, "deploy.run")
    assert SECRET_VALUE not in done.stdout + done.stderr
    assert SECRET_VALUE not in str(request)
    assert SECRET_VALUE not in server.log()


def test_an_unreachable_server_fails_closed_with_69(tmp_path: Path) -> None:
    done = subprocess.run(
        exec_args("test.allow", "touch", "marker"),
        env=environment(None, url=f"http://127.0.0.1:{free_port()}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 69, done.stderr
    assert "cannot reach the keyturn server at http://127.0.0.1:" in done.stderr
    assert "ConnectError" not in done.stderr  # CLI words, not the SDK's exception repr
    assert not (tmp_path / "marker").exists()


def test_usage_errors(server: LiveServer, tmp_path: Path) -> None:
    env = environment(server)
    env.pop("KEYTURN_API_KEY")
    no_key = subprocess.run(
        exec_args("test.allow", "true"), env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert no_key.returncode == 64 and "KEYTURN_API_KEY" in no_key.stderr
    bad_action = run_exec(server, "not a valid action!", "true", cwd=tmp_path)
    assert bad_action.returncode == 1 and "action" in bad_action.stderr


def test_a_missing_command_exits_127_and_is_reported_failed(server: LiveServer, tmp_path: Path) -> None:
    done = run_exec(server, "test.allow", "./definitely-not-here", cwd=tmp_path)
    assert done.returncode == 127
    request = last_request(server, "test.allow")
    assert request["status"] == "failed" and request["result"]["detail"] == "exit code 127"


def test_python_child_output_is_streamed_byte_for_byte(server: LiveServer, tmp_path: Path) -> None:
    code = "import sys; sys.stdout.buffer.write(bytes(range(256))); sys.exit(0)"
    done = subprocess.run(
        exec_args("test.allow", sys.executable, "-c", code),
        env=environment(server),
        cwd=tmp_path,
        capture_output=True,
    )
    assert done.returncode == 0 and done.stdout == bytes(range(256))
    request = last_request(server, "test.allow")
    assert request["status"] == "succeeded" and request["result"]["detail"] == "exit code 0"
    assert request["result"]["output_digest"] == "sha256:" + hashlib.sha256(bytes(range(256))).hexdigest()


def test_a_reviewer_may_edit_the_command_string_instead(server: LiveServer, tmp_path: Path) -> None:
    child = _start(server, tmp_path, "touch", "string-asked")
    request = _pending(server, "string-asked")
    with server.client(ALICE) as alice:
        alice.review(request["id"], "approve", "", {"command": "touch 'string edited'"})
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 0, stderr
    assert (tmp_path / "string edited").exists() and not (tmp_path / "string-asked").exists()


ASKED = {"argv": ["rm", "-r", "build"], "cwd": "/src", "command": "rm -r build"}


@pytest.mark.parametrize(
    ("approved", "expected"),
    [
        (ASKED, (["rm", "-r", "build"], "/src")),
        ({**ASKED, "argv": ["rm", "build/x"]}, (["rm", "build/x"], "/src")),
        ({**ASKED, "command": "rm 'build/a b'"}, (["rm", "build/a b"], "/src")),
        ({**ASKED, "argv": ["ls"], "command": "ls"}, (["ls"], "/src")),
        ({**ASKED, "cwd": "/src/sub"}, (["rm", "-r", "build"], "/src/sub")),
    ],
)
def test_approved_command_applies_either_edit(
    approved: dict[str, Any], expected: tuple[list[str], str]
) -> None:
    assert approved_command(ASKED, approved) == expected


@pytest.mark.parametrize(
    "approved",
    [
        {**ASKED, "argv": ["ls"], "command": "pwd"},  # both edited, and they disagree
        {**ASKED, "argv": []},
        {**ASKED, "argv": "rm -r build"},
        {**ASKED, "cwd": ""},
        {**ASKED, "command": "rm 'unterminated"},
        {**ASKED, "command": "   "},
        {**ASKED, "command": 42},
    ],
)
def test_approved_command_refuses_what_it_cannot_run_exactly(approved: dict[str, Any]) -> None:
    with pytest.raises(UnrunnableCommand):
        approved_command(ASKED, approved)
