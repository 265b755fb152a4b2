"""Slow and stuck clients cannot hold a real `keyturn serve` (issue #13 §1, §5).

- slowloris: connections that never finish their request head are closed after `server.header_timeout`,
  and a normal call answers meanwhile;
- a stop (SIGTERM) with a slow request in flight finishes within `server.shutdown_timeout` plus a margin.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx

from support.live import start_server

AGENT = "agent:deploy-bot"
SLOW_CONNECTIONS = 60


def _is_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""  # EOF: the server closed it (it never sends a body to a half head)
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_connections_that_never_finish_their_head_are_closed_and_others_are_served(tmp_path: Path) -> None:
    server = start_server(tmp_path, settings={"server": {"header_timeout": 2.0}}, timeout=120)
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"POST /v1/actions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            slow.append(sock)
        # A normal call is served while they hang (it does not queue behind them).
        with server.client(AGENT, timeout=10.0) as agent:
            assert agent.submit("test.allow", "svc://x", {})["status"] == "allowed"
        # Trickle a header byte now and then, as slowloris does: it must not keep a connection alive.
        deadline = time.monotonic() + 30
        open_ones = list(slow)
        while open_ones and time.monotonic() < deadline:
            for sock in open_ones:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
            time.sleep(0.5)
            for sock in open_ones:
                sock.settimeout(0.01)
            open_ones = [s for s in open_ones if not _is_closed(s)]
        assert open_ones == [], f"{len(open_ones)} of {SLOW_CONNECTIONS} slow connections still open"
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    finally:
        for sock in slow:
            sock.close()
        server.stop()


def test_a_stop_with_a_slow_request_in_flight_is_bounded(tmp_path: Path) -> None:
    server = start_server(tmp_path, settings={"server": {"shutdown_timeout": 2.0}}, timeout=120)
    with server.client(AGENT) as agent:
        request_id = agent.submit("db.export", "postgres://prod/x", {"rows": 1})["id"]
    outcome: dict[str, object] = {}

    def long_poll() -> None:
        try:
            outcome["status"] = httpx.get(
                f"{server.url}/v1/actions/{request_id}/wait",
                params={"timeout": 120},
                headers=server.headers(AGENT),
                timeout=60,
            ).status_code
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=long_poll)
    waiter.start()
    time.sleep(0.5)  # let it be in flight (not a timing assert)
    assert server.process is not None
    process = server.process
    process.send_signal(signal.SIGTERM)
    try:
        # shutdown_timeout is 2 s; the margin covers the final checkpoint and a loaded machine.
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("SIGTERM did not stop the server with a long-poll in flight") from None
    finally:
        waiter.join(60)
        server.process = None
    assert process.returncode is not None
    assert "status" in outcome or "error" in outcome  # the long-poll was ended, not left hanging


def test_a_stop_with_a_handler_stuck_in_a_worker_thread_is_bounded(tmp_path: Path) -> None:
    """A submit blocked on the database (another process holds SQLite's write lock: the handler waits up to
    the 30 s busy timeout in a worker thread) does not hold a SIGTERM beyond the shutdown bound."""
    server = start_server(tmp_path, settings={"server": {"shutdown_timeout": 2.0}}, timeout=120)
    assert server.process is not None
    process = server.process
    database = server.database_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the write lock, held until the end of the test

        def stuck_submit() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(
                    server.url + "/v1/actions",
                    json={"action": "test.allow", "resource": "svc://stuck"},
                    headers=server.headers(AGENT),
                    timeout=60,
                )

        caller = threading.Thread(target=stuck_submit)
        caller.start()
        time.sleep(1.0)  # let the handler reach the lock (not a timing assert)
        process.send_signal(signal.SIGTERM)
        try:
            # 2 s shutdown bound + 2 s for abandoned handlers + a loaded machine's margin, and still well
            # under the 30 s the stuck handler would otherwise hold the exit.
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("a handler stuck in a worker thread held SIGTERM") from None
        finally:
            server.process = None
        caller.join(60)
    finally:
        blocker.close()
