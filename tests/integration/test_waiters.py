"""Waiters cost nothing while idle (issue #12): one wake-up mechanism and one credential sweep for all.

Before: every SSE stream and long-poll re-authenticated its caller every 5 s on its own, and every SSE
stream re-read its request every 15-40 s, all through the worker-thread pool the API uses; the feed walked
every subscription on every commit. With thousands of waiters the approval they waited for timed out.

These tests run the real app under uvicorn in this process (so they can count what the server does),
with real HTTP clients on loopback, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from keyturn.config import load_settings
from keyturn.server.app import create_app
from keyturn.server.credential_sweep import CredentialSweep
from keyturn.signing_keys import new_kek
from keyturn.store import ChangeFeed, SqlApiKeyRepository, Store
from support.live import DEFAULT_POLICY, DEFAULT_USERS, create_agent_keys, free_port, write_users_file

pytestmark = pytest.mark.timeout(240)

AGENT = "agent:deploy-bot"
REVIEWER = "user:alice@example.com"
SWEEP_SECONDS = 0.5


@dataclass
class InProcessServer:
    url: str
    port: int
    app: Any
    loop: asyncio.AbstractEventLoop
    tokens: dict[str, str]
    database_url: str

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[InProcessServer]:
    (tmp_path / "policy.yaml").write_text(DEFAULT_POLICY, encoding="utf-8")
    tokens = write_users_file(tmp_path / "users.yaml", DEFAULT_USERS)
    tokens.update(create_agent_keys(database_url, {AGENT: ["bots"]}))
    port = free_port()
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "database": database_url,
        "policy": [str(tmp_path / "policy.yaml")],
        "users_file": str(tmp_path / "users.yaml"),
        "data_dir": str(tmp_path / "data"),
        "ledger": {"origin": "keyturn.test/ledger"},
    }
    if database_url.startswith("postgres"):
        (tmp_path / "kek").write_text(new_kek() + "\n", encoding="ascii")
        config["key_encryption_key_file"] = str(tmp_path / "kek")
    (tmp_path / "keyturn.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    app = create_app(load_settings(tmp_path / "keyturn.yaml"))
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    loop = uv.servers[0].get_loop()
    running = InProcessServer(f"http://127.0.0.1:{port}", port, app, loop, tokens, database_url)
    # A short sweep interval keeps the revocation test quick; the default is 5 s.
    running.on_loop(lambda: setattr(app.state, "credential_sweep", sweep(app)))
    try:
        yield running
    finally:
        uv.should_exit = True
        thread.join(30)


def sweep(app: Any) -> CredentialSweep:
    return CredentialSweep(app.state.authenticator.authenticate, interval=SWEEP_SECONDS)


def submit(server: InProcessServer) -> str:
    answer = httpx.post(
        f"{server.url}/v1/actions",
        json={"action": "db.export", "resource": "postgres://prod/x", "params": {"rows": 5}},
        headers={"Authorization": f"Bearer {server.tokens[AGENT]}"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    request_id: str = answer.json()["id"]
    return request_id


def open_waiters(server: InProcessServer, path: str, count: int, key: str) -> list[socket.socket]:
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode()
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(head)
        sockets.append(sock)
    return sockets


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def received_until(sock: socket.socket, marker: bytes) -> bytes:
    """What the socket received up to `marker` (or until it closed)."""
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def subscribers(server: InProcessServer) -> int:
    count: int = server.app.state.keyturn.store.feed.subscriber_count
    return count


class Counted:
    """Wraps a callable and counts its calls (from any thread)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
        return self.fn(*args, **kwargs)


def borrowed_worker_threads(server: InProcessServer) -> float:
    from anyio import to_thread

    return server.on_loop(lambda: to_thread.current_default_thread_limiter().borrowed_tokens)


def test_idle_waiters_read_nothing_hold_no_thread_and_an_approval_wakes_them_all(
    server: InProcessServer,
) -> None:
    request_id = submit(server)
    key = server.tokens[AGENT]
    # A pool of 4 worker threads for 500 waiters: the pool must not cap how many can wait.
    server.on_loop(lambda: setattr(_limiter(), "total_tokens", 4))
    before = subscribers(server)  # the server's own (the outbox dispatcher listens to everything)
    polls = open_waiters(server, f"/v1/actions/{request_id}/wait?timeout=120", 250, key)
    streams = open_waiters(server, f"/v1/actions/{request_id}/events", 250, key)
    wait_for(lambda: subscribers(server) >= before + 500, 120, "not every waiter subscribed")
    for stream in streams:
        assert b"event: state" in received_until(stream, b"event: state")

    svc, authenticator = server.app.state.keyturn, server.app.state.authenticator
    svc.get = reads = Counted(svc.get)
    authenticator.authenticate = checks = Counted(authenticator.authenticate)
    sweeps_before = server.app.state.credential_sweep.sweeps
    time.sleep(6.0)  # longer than the 5 s each waiter used to re-check its credential on its own
    sweeps = server.app.state.credential_sweep.sweeps - sweeps_before
    assert reads.calls == 0, "idle waiters read their request"  # before: streams re-read every 15-40 s
    assert sweeps >= 1 and checks.calls <= sweeps, "one check per sweep for one credential"  # before: 500/5 s
    # The server's own timers and dispatcher borrow a worker now and then; 500 waiters holding the pool of
    # 4 would show as a pool never free.
    samples = [borrowed_worker_threads(server) for _ in range(20)]
    assert min(samples) == 0, f"idle waiters hold worker threads: {samples}"

    with httpx.Client(timeout=60) as reviewer:
        approval = reviewer.post(
            f"{server.url}/v1/actions/{request_id}/reviews",
            json={"decision": "approve"},
            headers={"Authorization": f"Bearer {server.tokens[REVIEWER]}"},
        )
    assert approval.status_code == 200, approval.text
    for poll in polls:
        assert b'"status":"approved"' in received_until(poll, b'"status":"approved"')
    for stream in streams:  # SSE data is json.dumps with its default separators
        assert b'"status": "approved"' in received_until(stream, b'"status": "approved"')
    for sock in polls + streams:
        sock.close()
    wait_for(lambda: subscribers(server) == before, 30, "subscriptions outlived their waiters")


def _limiter() -> Any:
    from anyio import to_thread

    return to_thread.current_default_thread_limiter()


def test_one_sweep_closes_every_waiter_of_a_revoked_key(server: InProcessServer) -> None:
    request_id = submit(server)
    key = server.tokens[AGENT]
    before = subscribers(server)
    polls = open_waiters(server, f"/v1/actions/{request_id}/wait?timeout=120", 100, key)
    streams = open_waiters(server, f"/v1/actions/{request_id}/events", 100, key)
    wait_for(lambda: subscribers(server) >= before + 200, 60, "not every waiter subscribed")
    authenticator = server.app.state.authenticator
    authenticator.authenticate = checks = Counted(authenticator.authenticate)
    sweep_state = server.app.state.credential_sweep
    sweeps_before = sweep_state.sweeps
    store = Store.open(server.database_url)
    try:
        assert SqlApiKeyRepository(store).revoke(key[: len("kt_") + 8])
    finally:
        store.close()
    for poll in polls:
        answer = received_until(poll, b"}}")
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    for stream in streams:
        assert b"event: error" in received_until(stream, b"event: error")
    # 200 waiters, one credential: each sweep re-checked it once (before: each waiter on its own).
    assert checks.calls <= sweep_state.sweeps - sweeps_before
    wait_for(lambda: subscribers(server) == before, 30, "subscriptions outlived their waiters")
    assert sweep_state.watched == 0


def _calls_during(fn: Callable[[], None]) -> int:
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


async def test_publishing_one_request_costs_the_same_however_many_wait_on_others() -> None:
    feed = ChangeFeed()
    mine = feed.subscribe("req_mine")
    await mine.__aenter__()
    baseline = _calls_during(lambda: feed.publish("req_mine"))
    others = [feed.subscribe(f"req_{i}") for i in range(5000)]
    for other in others:
        await other.__aenter__()
    # Before: publish walked all 5,001 subscriptions (a `wants()` call each) under the lock.
    assert _calls_during(lambda: feed.publish("req_mine")) == baseline
    assert await mine.wait(5.0)
    assert not any([await other.wait(0) for other in others[:50]])  # nobody else was woken
