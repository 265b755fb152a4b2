"""The SDK against a real `keyturn serve`: guard, request, waiting by push, grants, retries, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import rfc8785

from keyturn import (
    ApprovalTimeout,
    AsyncGate,
    Denied,
    Gate,
    GrantRefused,
    KeyturnError,
    NotRunnable,
    Unreachable,
    UnserializableArguments,
)
from keyturn.sdk._core import LOST_EXECUTION
from support.live import LiveServer, start_server

AGENT = "agent:deploy-bot"
ALICE = "user:alice@example.com"
CAROL = "user:carol@example.com"

POLICY = """\
version: 1
defaults: {decision: review, approvers: [security], ttl: 1h}
rules:
  - name: free
    match: {action: ["test.*.allow", "*.read"]}
    decision: allow
  - name: never
    match: {action: "test.*.deny"}
    decision: deny
    reason: test.deny is never allowed
  - name: exports need an sre
    match: {action: "db.*"}
    decision: review
    quorum: 1
    approvers: [sre]
    editable: [params.rows, params.extra]
  - name: nobody answers in time
    match: {action: "test.*.expire"}
    decision: review
    quorum: 1
    approvers: [sre]
    ttl: 1s
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("sdk"), policy=POLICY, settings={"timer_interval": 0.1})
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def gate(server: LiveServer) -> Iterator[Gate]:
    with Gate(server.url, server.tokens[AGENT], timeout=20) as gate:
        yield gate


_counter = iter(range(1_000_000))


def unique(kind: str, prefix: str = "test") -> str:
    """A fresh action name per test, so requests of one test are easy to find and count."""
    return f"{prefix}.t{next(_counter)}.{kind}"


def requests_for(server: LiveServer, action: str) -> list[dict[str, Any]]:
    with server.client(AGENT) as client:
        return [r for r in client.list(limit=200)["items"] if r["action"] == action]


def digest_of(value: Any) -> str:
    return "sha256:" + hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def approver(server: LiveServer, who: str = ALICE, **review: Any) -> Any:
    """An `on_update` that reviews the request once, from another identity, as soon as it is pending."""
    done: list[str] = []

    def on_update(view: dict[str, Any]) -> None:
        if view["status"] == "pending" and not done:
            done.append(view["id"])
            with server.client(who) as client:
                client.review(view["id"], review.pop("decision", "approve"), **review)

    return on_update


# --- guard -----------------------------------------------------------------------------------------------


def test_an_allowed_call_runs_once_and_reports_its_outcome(server: LiveServer, gate: Gate) -> None:
    action = unique("allow")
    calls: list[tuple[str, int]] = []

    @gate.guard(action, resource=lambda table, **_: f"postgres://prod/{table}", justification="nightly")
    def export(table: str, rows: int = 10) -> dict[str, Any]:
        calls.append((table, rows))
        return {"exported": rows}

    assert export("customers", rows=5) == {"exported": 5}
    assert calls == [("customers", 5)]
    [request] = requests_for(server, action)
    assert request["resource"] == "postgres://prod/customers" and request["justification"] == "nightly"
    assert request["params"] == {"table": "customers", "rows": 5}
    assert request["status"] == "succeeded"
    assert request["result"]["output_digest"] == digest_of({"exported": 5})


def test_a_pending_request_waits_for_another_identity_and_gets_the_edit(
    server: LiveServer, gate: Gate
) -> None:
    action = unique("export", prefix="db")
    seen: list[str] = []
    review = approver(server, comment="500 is enough", params={"rows": 500})

    def on_update(view: dict[str, Any]) -> None:
        seen.append(view["status"])
        review(view)

    with gate.request(
        action,
        resource="postgres://prod/customers",
        params={"table": "customers", "rows": 5000},
        on_update=on_update,
    ) as approval:
        assert approval.edited and approval.params == {"table": "customers", "rows": 500}
        assert approval.original_params == {"table": "customers", "rows": 5000}
    assert seen[0] == "pending" and seen[-1] == "approved"
    [request] = requests_for(server, action)
    assert request["status"] == "succeeded" and request["approved_params"]["rows"] == 500
    assert request["reviews"][0]["comment"] == "500 is enough"


def test_guarded_function_runs_with_the_edited_argument(server: LiveServer, gate: Gate) -> None:
    action = unique("export", prefix="db")
    calls: list[tuple[str, int]] = []

    @gate.guard(action, resource=lambda table, **_: f"postgres://prod/{table}")
    def export(table: str, rows: int) -> str:
        calls.append((table, rows))
        return f"{rows} rows"

    with server.client(ALICE) as alice:
        reviewer = _ReviewWhenPending(alice, action, decision="approve", comment="ok", params={"rows": 700})
        with reviewer:
            assert export("customers", 9000) == "700 rows"
    assert calls == [("customers", 700)]


class _ReviewWhenPending:
    """Reviews the first pending request of `action` from a thread: the guard waits in the caller's thread."""

    def __init__(self, client: Any, action: str, **review: Any) -> None:
        self.client, self.action, self.review = client, action, review
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> _ReviewWhenPending:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.thread.join(20)
        if self.error:
            raise self.error

    def _run(self) -> None:
        try:
            while True:
                items = [r for r in self.client.list(status="pending")["items"] if r["action"] == self.action]
                if items:
                    self.client.review(items[0]["id"], **self.review)
                    return
                time.sleep(0.02)
        except BaseException as exc:  # surfaced in __exit__
            self.error = exc


def test_a_reviewer_denial_raises_denied_with_reviewer_and_comment(server: LiveServer, gate: Gate) -> None:
    action = unique("export", prefix="db")
    ran: list[bool] = []
    review = approver(server, decision="deny", comment="use the staging replica instead")
    with pytest.raises(Denied) as caught, gate.request(action, params={"rows": 1}, on_update=review):
        ran.append(True)
    assert not ran
    denied = caught.value
    assert (denied.status, denied.reviewer, denied.comment) == (
        "denied",
        ALICE,
        "use the staging replica instead",
    )
    assert denied.for_model() == f"denied by {ALICE}: use the staging replica instead"


def test_on_denied_return_gives_the_model_the_text(server: LiveServer, gate: Gate) -> None:
    ran: list[bool] = []

    @gate.guard(unique("deny"), on_denied="return")
    def drop(table: str) -> str:
        ran.append(True)
        return "dropped"

    assert drop("customers") == "denied by policy (test.deny is never allowed)"
    assert not ran
    with pytest.raises(Denied, match=r"test\.deny is never allowed"):
        gate.guard(unique("deny"))(drop.__wrapped__)("customers")  # type: ignore[attr-defined]


def test_an_unanswered_request_expires_and_nothing_runs(server: LiveServer, gate: Gate) -> None:
    ran: list[bool] = []

    @gate.guard(unique("expire"))
    def act() -> None:
        ran.append(True)

    with pytest.raises(Denied) as caught:
        act()
    assert caught.value.status == "expired" and not ran
    assert caught.value.for_model().startswith("expired: nobody approved within 1s")


def test_a_failing_body_is_reported_failed_with_the_exception_type(server: LiveServer, gate: Gate) -> None:
    action = unique("allow")

    @gate.guard(action)
    def explode(password: str) -> None:
        raise ValueError(f"bad password {password}")

    with pytest.raises(ValueError):
        explode("hunter2")
    [request] = requests_for(server, action)
    assert request["status"] == "failed" and request["result"]["detail"] == "raised ValueError"
    assert "hunter2" not in str(request["result"])


def test_methods_and_var_args_are_guarded(server: LiveServer, gate: Gate) -> None:
    action = unique("allow")

    class Shell:
        @gate.guard(action)
        def run(self, cmd: str, *args: str, **env: str) -> str:
            return " ".join([cmd, *args, *env])

    assert Shell().run("ls", "-l", "/tmp", LANG="C") == "ls -l /tmp LANG"
    [request] = requests_for(server, action)
    assert request["params"] == {"cmd": "ls", "args": ["-l", "/tmp"], "LANG": "C"}


# --- never run without a consumed grant ------------------------------------------------------------------


def test_the_body_never_runs_when_someone_else_consumed_the_grant(server: LiveServer, gate: Gate) -> None:
    action = unique("export", prefix="db")
    ran: list[bool] = []
    review = approver(server)
    stolen: list[str] = []

    def on_update(view: dict[str, Any]) -> None:
        review(view)
        assert "grant" not in view  # callbacks never see the bearer grant
        if view["status"] == "approved":
            # Between the approval and the SDK's consume, someone holding the requester's key takes the
            # grant and consumes it first (another agent could not: a grant binds its holder).
            with server.client(AGENT) as requester:
                grant = requester.get(view["id"])["grant"]
            with server.client(AGENT) as thief:
                stolen.append(thief.consume(grant)["request_id"])

    with pytest.raises(GrantRefused, match="already consumed"), gate.request(action, on_update=on_update):
        ran.append(True)
    assert stolen and not ran


def test_a_grant_is_consumed_once(server: LiveServer, gate: Gate) -> None:
    view = gate.submit(unique("allow"), params={"x": 1})
    assert view["status"] == "allowed" and view["grant"]
    assert gate.consume(view["grant"])["params"] == {"x": 1}
    with pytest.raises(GrantRefused):
        gate.consume(view["grant"])


def test_an_idempotent_replay_of_a_finished_request_does_not_run_again(
    server: LiveServer, gate: Gate
) -> None:
    action, ran = unique("allow"), []
    for attempt in range(2):
        try:
            with gate.request(action, params={"n": 1}, idempotency_key="replay-me-" + action):
                ran.append(attempt)
            assert gate.flush()  # the outcome is reported in the background
        except NotRunnable as exc:
            assert exc.status == "succeeded"
    assert ran == [0]
    assert len(requests_for(server, action)) == 1


# --- before anything is submitted --------------------------------------------------------------------------


def test_unserialisable_arguments_fail_before_anything_is_submitted(server: LiveServer, gate: Gate) -> None:
    action = unique("allow")
    ran: list[bool] = []

    @gate.guard(action)
    def upload(data: bytes) -> None:
        ran.append(True)

    with pytest.raises(UnserializableArguments, match="'data'"):
        upload(b"\x00\x01")
    with pytest.raises(TypeError):  # it is also a TypeError, like a wrong call
        upload({1, 2})
    assert not ran and requests_for(server, action) == []


# --- the network -----------------------------------------------------------------------------------------


class DropFirstResponse(httpx.BaseTransport):
    """Delivers the first submit to the server, then loses its answer: what a flaky network does."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.dropped = 0
        self.submits: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/actions":
            self.submits.append(request.content.decode())
            if self.dropped == 0:
                self.dropped += 1
                response.read()
                response.close()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_lost_submit_answer_is_retried_with_the_same_key(server: LiveServer) -> None:
    action = unique("allow")
    transport = DropFirstResponse()
    ran: list[bool] = []
    with Gate(server.url, server.tokens[AGENT], transport=transport) as gate:

        @gate.guard(action)
        def act(n: int) -> int:
            ran.append(True)
            return n

        assert act(1) == 1
    # The retry (same body, same key) finds the request the lost submit executed; a replay never hands out
    # a second execution, so that request is closed as failed and the call is submitted once more.
    assert transport.dropped == 1 and len(transport.submits) == 3
    assert transport.submits[0] == transport.submits[1]  # same body, same idempotency key
    third = json.loads(transport.submits[2])
    assert third["idempotency_key"] != json.loads(transport.submits[0])["idempotency_key"]
    assert ran == [True]
    lost, ran_once = sorted(requests_for(server, action), key=lambda r: r["created_at"])
    assert lost["status"] == "failed" and lost["result"]["detail"] == LOST_EXECUTION
    assert ran_once["status"] == "succeeded"


def test_an_unreachable_server_fails_closed() -> None:
    from support.live import free_port

    ran: list[bool] = []
    with Gate(f"http://127.0.0.1:{free_port()}", "kt_whatever", timeout=5) as gate:

        @gate.guard("test.allow")
        def act() -> None:
            ran.append(True)

        with pytest.raises(Unreachable):
            act()
    assert not ran


def test_bad_credentials_are_a_server_error(server: LiveServer) -> None:
    with Gate(server.url, "kt_not_a_key") as gate, pytest.raises(KeyturnError) as caught:
        gate.submit("test.allow")
    assert getattr(caught.value, "status", None) == 401


def test_timeout_cancels_the_request(server: LiveServer, gate: Gate) -> None:
    action = unique("export", prefix="db")
    with pytest.raises(ApprovalTimeout) as caught, gate.request(action, timeout=0.5):
        pytest.fail("must not run")
    [request] = requests_for(server, action)
    assert request["id"] == caught.value.request_id and request["status"] == "cancelled"


class BreakEventStreams(httpx.BaseTransport):
    """Every SSE connection fails (a proxy that cuts streams): the waiter must fall back to long-poll."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.broken = 0
        self.polls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            self.broken += 1
            raise httpx.RemoteProtocolError("peer closed connection", request=request)
        if request.url.path.endswith("/wait"):
            self.polls += 1
        return self.inner.handle_request(request)


def test_waiting_falls_back_to_long_poll(server: LiveServer) -> None:
    transport = BreakEventStreams()
    action = unique("export", prefix="db")
    with (
        Gate(server.url, server.tokens[AGENT], transport=transport, timeout=20) as gate,
        gate.request(action, params={"rows": 2}, on_update=approver(server)) as approval,
    ):
        assert approval.params == {"rows": 2}
    assert transport.broken >= 3 and transport.polls >= 1


# --- async -----------------------------------------------------------------------------------------------


async def test_async_guard_waits_applies_edits_and_reports(server: LiveServer) -> None:
    action = unique("export", prefix="db")
    calls: list[int] = []
    async with AsyncGate(server.url, server.tokens[AGENT], timeout=20) as agate:

        @agate.guard(action, resource="postgres://prod/orders")
        async def export(table: str, rows: int) -> int:
            calls.append(rows)
            await asyncio.sleep(0)
            return rows

        async def review() -> None:
            with server.client(ALICE) as alice:
                while True:
                    pending = [r for r in alice.list(status="pending")["items"] if r["action"] == action]
                    if pending:
                        alice.review(pending[0]["id"], "approve", "fewer", {"rows": 3})
                        return
                    await asyncio.sleep(0.02)

        result, _ = await asyncio.gather(export("orders", 30), asyncio.wait_for(review(), 20))
    assert result == 3 and calls == [3]
    [request] = requests_for(server, action)
    assert request["status"] == "succeeded" and request["result"]["output_digest"] == digest_of(3)


async def test_async_request_reports_progress_and_denial(server: LiveServer) -> None:
    action = unique("export", prefix="db")
    updates: list[str] = []

    async def on_update(view: dict[str, Any]) -> None:
        updates.append(view["status"])
        if view["status"] == "pending" and len(updates) == 1:
            with server.client(ALICE) as alice:
                await asyncio.to_thread(alice.review, view["id"], "deny", "not today")

    async with AsyncGate(server.url, server.tokens[AGENT]) as agate:
        with pytest.raises(Denied, match="not today"):
            async with agate.request(action, on_update=on_update):
                pytest.fail("must not run")
        assert await agate.guard(unique("deny"), on_denied="return")(_noop)() == (
            "denied by policy (test.deny is never allowed)"
        )
    assert updates[0] == "pending" and updates[-1] == "denied"


async def _noop() -> None:
    raise AssertionError("must not run")


async def test_cancelling_the_waiting_task_cancels_the_request(server: LiveServer) -> None:
    action = unique("export", prefix="db")
    pending = asyncio.Event()
    async with AsyncGate(server.url, server.tokens[AGENT]) as agate:

        async def wait_for_approval() -> None:
            async with agate.request(action, on_update=lambda view: pending.set()):
                raise AssertionError("must not run")

        task = asyncio.create_task(wait_for_approval())
        await asyncio.wait_for(pending.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    [request] = requests_for(server, action)
    assert request["status"] == "cancelled"


async def test_sync_gate_guards_async_functions(server: LiveServer, gate: Gate) -> None:
    action = unique("allow")

    @gate.guard(action)
    async def act(n: int) -> int:
        return n * 2

    assert await act(21) == 42
    assert requests_for(server, action)[0]["status"] == "succeeded"


async def test_async_unserialisable_arguments_and_lost_submit(server: LiveServer) -> None:
    action = unique("allow")

    class DropFirst(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()
            self.dropped = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            if request.method == "POST" and request.url.path == "/v1/actions" and not self.dropped:
                self.dropped += 1
                await response.aread()
                raise httpx.ReadError("reset", request=request)
            return response

    transport = DropFirst()
    async with AsyncGate(server.url, server.tokens[AGENT], transport=transport) as agate:

        @agate.guard(action)
        async def act(value: Any) -> Any:
            return value

        with pytest.raises(UnserializableArguments):
            await act(object())
        assert requests_for(server, action) == []
        assert await act([1, 2]) == [1, 2]
    # the lost submit's request is closed as failed (nothing ran), the call ran under a second one
    statuses = sorted(r["status"] for r in requests_for(server, action))
    assert transport.dropped == 1 and statuses == ["failed", "succeeded"]


@pytest.mark.postgresql
def test_waiting_on_one_replica_wakes_on_an_approval_given_on_another(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    primary = start_server(tmp_path_factory.mktemp("pg"), database_url=postgres_url, policy=POLICY)
    try:
        replica = primary.start_replica()
        action = unique("export", prefix="db")
        with Gate(primary.url, primary.tokens[AGENT], timeout=20) as gate:

            @gate.guard(action)
            def export(rows: int) -> int:
                return rows

            with (
                replica.client(ALICE) as alice,
                _ReviewWhenPending(alice, action, decision="approve", params={"rows": 4}),
            ):
                assert export(40) == 4
        [request] = requests_for(replica, action)
        assert request["status"] == "succeeded"
    finally:
        primary.stop()


# --- the outcome report is off the caller's path ------------------------------------------------------------


class HoldReports(httpx.BaseTransport):
    """Answers the first `refuse` result reports with 503 without passing them on, and holds every report
    until `release` is set: a slow, then refusing, server as the background sender sees it."""

    def __init__(self, refuse: int = 0) -> None:
        self.inner = httpx.HTTPTransport()
        self.release = threading.Event()
        self.refuse = refuse
        self.reports: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/result"):
            assert self.release.wait(30)
            if len(self.reports) < self.refuse:
                self.reports.append(503)
                return httpx.Response(503, json={"error": {"code": "unavailable", "message": "busy"}})
            response = self.inner.handle_request(request)
            self.reports.append(response.status_code)
            return response
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_the_guarded_call_returns_before_its_outcome_is_reported(server: LiveServer) -> None:
    action, transport = unique("allow"), HoldReports()
    with Gate(server.url, server.tokens[AGENT], transport=transport) as gate:
        assert gate.guard(action)(lambda n: n * 2)(21) == 42  # returned while its report is held
        (request,) = requests_for(server, action)
        assert request["status"] == "executing" and transport.reports == []
        transport.release.set()
        assert gate.flush()
    assert transport.reports == [200]
    assert requests_for(server, action)[0]["status"] == "succeeded"


def test_a_refused_report_is_retried_until_it_lands_and_close_flushes_it(server: LiveServer) -> None:
    action, transport = unique("allow"), HoldReports(refuse=2)
    transport.release.set()
    with Gate(server.url, server.tokens[AGENT], transport=transport) as gate:

        @gate.guard(action)
        def act() -> str:
            return "done"

        assert act() == "done"
    # closing the gate waited for the report through two 503s
    assert transport.reports == [503, 503, 200]
    (request,) = requests_for(server, action)
    assert request["status"] == "succeeded" and request["result"]["output_digest"] == digest_of("done")


class AsyncHoldReports(httpx.AsyncBaseTransport):
    """`HoldReports` for `AsyncGate`."""

    def __init__(self, refuse: int = 0) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.release = asyncio.Event()
        self.refuse = refuse
        self.reports: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/result"):
            await self.release.wait()
            if len(self.reports) < self.refuse:
                self.reports.append(503)
                return httpx.Response(503, json={"error": {"code": "unavailable", "message": "busy"}})
            response = await self.inner.handle_async_request(request)
            self.reports.append(response.status_code)
            return response
        return await self.inner.handle_async_request(request)


async def test_async_outcome_is_reported_in_the_background_through_a_refusal(server: LiveServer) -> None:
    action, transport = unique("allow"), AsyncHoldReports(refuse=1)
    async with AsyncGate(server.url, server.tokens[AGENT], transport=transport) as agate:

        @agate.guard(action)
        async def act(n: int) -> int:
            return n + 1

        assert await act(1) == 2  # returned while its report is held
        assert (await asyncio.to_thread(requests_for, server, action))[0]["status"] == "executing"
        transport.release.set()
        assert await agate.flush()
    assert transport.reports == [503, 200]
    assert requests_for(server, action)[0]["status"] == "succeeded"


def test_an_allowed_guarded_call_runs_after_one_round_trip(server: LiveServer) -> None:
    action, transport = unique("allow"), HoldReports()
    transport.release.set()
    sent: list[str] = []
    inner = transport.handle_request

    def counting(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.method} {request.url.path}")
        return inner(request)

    transport.handle_request = counting  # type: ignore[method-assign]
    with Gate(server.url, server.tokens[AGENT], transport=transport) as gate:

        @gate.guard(action)
        def act() -> list[str]:
            return list(sent)  # what had gone to the server when the body started

        assert act() == ["POST /v1/actions"]
    assert sent[-1].endswith("/result")
    assert requests_for(server, action)[0]["status"] == "succeeded"
