"""The request commands of the `keyturn` CLI against a real server on loopback.

`submit`, `list`, `show`, `approve`, `deny`, `cancel` and `wait` run through `keyturn.cli.app` — the object
the `keyturn` console script calls — with typer's runner (a subprocess per command would cost seconds of
imports each); one test runs the installed console script itself to cover the real entry point.
Credentials and URL come from KEYTURN_TOKEN / KEYTURN_URL, as for a user.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from keyturn.cli import app
from support.live import LiveServer, keyturn_executable, start_server

AGENT = "agent:deploy-bot"
ALICE = "user:alice@example.com"
BOB = "user:bob@example.com"
CAROL = "user:carol@example.com"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("cli"))
    try:
        yield live
    finally:
        live.stop()


def run(server: LiveServer, who: str | None, *args: str) -> Result:
    env = {"KEYTURN_URL": server.url, "COLUMNS": "250", "NO_COLOR": "1"}
    if who is not None:
        env["KEYTURN_TOKEN"] = server.tokens[who]
    else:
        env["KEYTURN_TOKEN"] = ""
    return CliRunner().invoke(app, list(args), env=env)


def submit(server: LiveServer, *args: str) -> dict[str, Any]:
    result = run(server, AGENT, "submit", *args)
    assert result.exit_code == 0, result.output
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_submit_prints_the_answer_as_json(server: LiveServer) -> None:
    answer = submit(
        server, "db.export", "--resource", "postgres://prod/customers", "--params", '{"rows": 10}'
    )
    assert answer["status"] == "pending" and answer["params"] == {"rows": 10}
    allowed = submit(server, "test.allow", "--idempotency-key", "cli-1")
    assert allowed["status"] == "allowed" and "grant" in allowed
    assert submit(server, "test.allow", "--idempotency-key", "cli-1")["id"] == allowed["id"]


@pytest.mark.parametrize("params", ["{not json", "[1, 2]", '"rows"'])
def test_submit_refuses_params_that_are_not_a_json_object(server: LiveServer, params: str) -> None:
    result = run(server, AGENT, "submit", "db.export", "--params", params)
    assert result.exit_code == 2
    assert "--params" in result.stderr
    assert "Traceback" not in result.output


def test_api_errors_are_one_line_not_a_traceback(server: LiveServer) -> None:
    result = run(server, AGENT, "submit", "not an action")
    assert result.exit_code == 1
    assert "body.action" in result.stderr and "invalid_request" in result.stderr
    result = run(server, None, "list")
    assert result.exit_code == 1 and "unauthenticated" in result.stderr


def test_an_unreachable_server_is_a_clear_error(server: LiveServer) -> None:
    env = {"KEYTURN_URL": "http://127.0.0.1:9", "KEYTURN_TOKEN": server.tokens[AGENT]}
    result = CliRunner().invoke(app, ["show", "req_x"], env=env)
    assert result.exit_code == 1
    assert "cannot reach the keyturn server at http://127.0.0.1:9" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_list_and_show(server: LiveServer) -> None:
    request_id = submit(server, "db.export", "--params", '{"rows": 3}', "--justification", "weekly numbers")[
        "id"
    ]
    queue = run(server, ALICE, "list", "--reviewable", "--status", "pending")
    assert queue.exit_code == 0, queue.output
    assert request_id in queue.stdout and "1 from sre" in queue.stdout
    assert request_id not in run(server, CAROL, "list", "--reviewable").stdout  # carol is not in sre
    shown = run(server, ALICE, "show", request_id)
    assert shown.exit_code == 0, shown.output
    for text in ("weekly numbers", "exports need an sre", "1 from sre", "params.rows", "request.pending"):
        assert text in shown.stdout, text
    missing = run(server, CAROL, "show", request_id)
    assert missing.exit_code == 1 and "not_found" in missing.stderr


def test_approve_with_an_edit_then_wait_exits_zero(server: LiveServer) -> None:
    request_id = submit(server, "db.export", "--params", '{"rows": 5000}')["id"]
    refused = run(server, ALICE, "approve", request_id, "--set", "table=payments")
    assert refused.exit_code == 1 and "edit_refused" in refused.stderr
    bad = run(server, ALICE, "approve", request_id, "--set", "rows")
    assert bad.exit_code == 2 and "param=value" in bad.stderr
    approved = run(
        server, ALICE, "approve", request_id, "--set", "params.rows=500", "--comment", "500 is enough"
    )
    assert approved.exit_code == 0, approved.output
    assert "approved" in approved.stdout
    shown = run(server, AGENT, "show", request_id)
    assert '"rows": 500' in shown.stdout and "approved params (edited)" in shown.stdout
    waited = run(server, AGENT, "wait", request_id, "--timeout", "5")
    assert waited.exit_code == 0, waited.output
    assert "500 is enough" in waited.stdout


def test_deny_needs_a_reason_and_wait_exits_one(server: LiveServer) -> None:
    request_id = submit(server, "db.export")["id"]
    missing = run(server, ALICE, "deny", request_id)
    assert missing.exit_code == 2  # typer: the option is required
    denied = run(server, ALICE, "deny", request_id, "--reason", "not this quarter")
    assert denied.exit_code == 0 and "denied" in denied.stdout
    waited = run(server, AGENT, "wait", request_id, "--timeout", "5")
    assert waited.exit_code == 1
    assert "not this quarter" in waited.stdout


def test_an_agent_cannot_approve_from_the_cli(server: LiveServer) -> None:
    request_id = submit(server, "db.export")["id"]
    result = run(server, AGENT, "approve", request_id)
    assert result.exit_code == 1 and "forbidden" in result.stderr


def test_cancel_then_wait_exits_one(server: LiveServer) -> None:
    request_id = submit(server, "db.export")["id"]
    not_mine = run(server, ALICE, "cancel", request_id)
    assert not_mine.exit_code == 1 and "not_requester" in not_mine.stderr
    cancelled = run(server, AGENT, "cancel", request_id, "--reason", "wrong table")
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    assert run(server, AGENT, "wait", request_id, "--timeout", "5").exit_code == 1


def test_wait_blocks_until_the_review(server: LiveServer) -> None:
    request_id = submit(server, "db.export")["id"]
    outcome: dict[str, Result] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(r=run(server, AGENT, "wait", request_id, "--timeout", "30"))
    )
    thread.start()
    time.sleep(0.5)  # let it start waiting (not a timing assert)
    assert thread.is_alive(), "wait returned before anyone reviewed"
    with server.client(BOB) as bob:
        bob.review(request_id, "approve", "go ahead")
    thread.join(30)
    assert outcome["r"].exit_code == 0, outcome["r"].output
    assert f"{request_id}: approved" in outcome["r"].stdout


def test_wait_times_out_with_exit_three(server: LiveServer) -> None:
    request_id = submit(server, "db.export")["id"]
    started = time.monotonic()
    result = run(server, AGENT, "wait", request_id, "--timeout", "0.5")
    assert result.exit_code == 3, result.output
    assert "still pending" in result.stderr and "1 from sre" in result.stderr
    assert time.monotonic() - started < 10


def test_the_console_script_reports_an_approval(server: LiveServer) -> None:
    """The installed `keyturn` executable, as a user runs it (blocking until a review is covered above)."""
    request_id = submit(server, "db.export")["id"]
    with server.client(BOB) as bob:
        bob.review(request_id, "approve", "go ahead")
    env = {**os.environ, "KEYTURN_URL": server.url, "KEYTURN_TOKEN": server.tokens[AGENT], "NO_COLOR": "1"}
    process = subprocess.run(
        [keyturn_executable(), "wait", request_id, "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
    assert f"{request_id}: approved" in process.stdout
    assert "go ahead" in process.stdout


def test_submit_carries_context_and_refuses_a_context_that_is_not_an_object(server: LiveServer) -> None:
    answer = submit(server, "db.export", "--context", '{"ticket": "OPS-42", "environment": "prod"}')
    assert answer["context"] == {"ticket": "OPS-42", "environment": "prod"}
    bad = run(server, AGENT, "submit", "db.export", "--context", "[1, 2]")
    assert bad.exit_code == 2 and "--context must be a JSON object" in bad.stderr


def test_version_and_an_empty_queue_say_so(server: LiveServer) -> None:
    from keyturn import __version__

    version = CliRunner().invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.strip() == f"keyturn {__version__}"
    empty = run(server, CAROL, "list", "--reviewable")
    assert empty.exit_code == 0 and "nothing to review" in empty.stdout
