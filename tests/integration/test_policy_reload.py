"""A running server reloads its policy when the files change and on SIGHUP, and keeps the last good policy
when an edit does not load (DESIGN §2, §3 Deployment). Real `keyturn serve` processes."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.live import DEFAULT_POLICY, LiveServer, start_server

AGENT = "agent:deploy-bot"
FROZEN_EXPORTS = DEFAULT_POLICY + (
    "  - name: export freeze\n    match: {action: db.export}\n    decision: deny\n    reason: frozen\n"
)


def readyz(server: LiveServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/readyz", timeout=10).json()
    return body


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.1)


def export_status(server: LiveServer) -> str:
    with server.client(AGENT) as agent:
        status: str = agent.submit("db.export", "postgres://prod/customers", {"rows": 10})["status"]
    return status


def metric_revision(server: LiveServer) -> str:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("keyturn_policy_revision_info{"):
            return line.split('revision="', 1)[1].split('"', 1)[0]
    raise AssertionError("no keyturn_policy_revision_info")


def test_an_edit_is_picked_up_and_a_broken_one_keeps_the_last_good_policy(tmp_path: Path) -> None:
    server = start_server(tmp_path, settings={"policy_reload_interval": 0.2})
    try:
        first = readyz(server)["policy_revision"]
        assert metric_revision(server) == first
        assert export_status(server) == "pending"

        (tmp_path / "policy.yaml").write_text(FROZEN_EXPORTS, encoding="utf-8")
        eventually(lambda: readyz(server)["policy_revision"] != first, "the edit was loaded")
        second = readyz(server)["policy_revision"]
        assert export_status(server) == "denied"  # a new request gets the new verdict
        assert metric_revision(server) == second

        broken = FROZEN_EXPORTS + "  - name: broken\n    match: {action: x.y}\n    decision: perhaps\n"
        (tmp_path / "policy.yaml").write_text(broken, encoding="utf-8")
        eventually(lambda: "policy_reload_error" in readyz(server), "the broken edit was tried")
        ready = readyz(server)
        assert ready["policy_revision"] == second  # the last good policy keeps serving
        assert ready["status"] == "ready"
        assert any("policy.yaml:" in problem for problem in ready["policy_reload_error"])
        assert export_status(server) == "denied"
        eventually(lambda: "policy not reloaded" in server.log(), "the failure was logged")
        logged = next(line for line in server.log().splitlines() if "policy not reloaded" in line)
        assert "policy.yaml:" in logged and second in logged

        (tmp_path / "policy.yaml").write_text(DEFAULT_POLICY, encoding="utf-8")  # fixed: back to the first
        eventually(lambda: readyz(server)["policy_revision"] == first, "the fixed file was loaded")
        assert "policy_reload_error" not in readyz(server)
        assert export_status(server) == "pending"
    finally:
        server.stop()


def test_sighup_reloads_a_server_that_does_not_poll(tmp_path: Path) -> None:
    server = start_server(tmp_path, settings={"policy_reload_interval": 0})
    try:
        first = readyz(server)["policy_revision"]
        (tmp_path / "policy.yaml").write_text(FROZEN_EXPORTS, encoding="utf-8")
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        eventually(lambda: readyz(server)["policy_revision"] != first, "SIGHUP reloaded the policy")
        assert export_status(server) == "denied"
        assert server.process.poll() is None  # SIGHUP reloads; it does not stop the server
        assert "(SIGHUP)" in server.log()
    finally:
        server.stop()
