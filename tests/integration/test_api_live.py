"""The action-request REST API through a real `keyturn serve` on loopback, on SQLite and on PostgreSQL.

One server per backend for the whole module (starting one costs seconds); every test submits its own
requests, so tests stay independent. Identities come from tests/support/live.py:
alice, bob, olivia (sre); sam (sre + security); carol, dave (security); dana (data-owners); erin (auditor);
agents deploy-bot and exec-bot. The default policy: `db.export` needs 1 from sre (rows editable, over a
million rows denied), `k8s.delete` needs 2 from sre and 1 from security, `test.allow` / `test.deny`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import jwt
import pytest
from httpx_sse import connect_sse

from conftest import fresh_postgres_schema
from keyturn.store import Store
from support.live import LiveServer, start_server

AGENT = "agent:deploy-bot"
EXECUTOR = "agent:exec-bot"
ALICE = "user:alice@example.com"
BOB = "user:bob@example.com"
SAM = "user:sam@example.com"
CAROL = "user:carol@example.com"
OLIVIA = "user:olivia@example.com"
ERIN = "user:erin@example.com"


class Servers:
    """One server per backend for the whole module, started on first use (a start costs seconds)."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self.tmp = tmp
        self.started: dict[str, LiveServer] = {}
        self.schemas = ExitStack()

    def get(self, backend: str) -> LiveServer:
        if backend not in self.started:
            workdir = self.tmp.mktemp(f"api-{backend}")
            url = self.schemas.enter_context(fresh_postgres_schema()) if backend == "postgresql" else None
            self.started[backend] = start_server(workdir, database_url=url)
        return self.started[backend]

    def close(self) -> None:
        for live in self.started.values():
            live.stop()
        self.schemas.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    started = Servers(tmp_path_factory)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def server(request: pytest.FixtureRequest, servers: Servers) -> LiveServer:
    """For behaviour where the database matters (concurrency, idempotency, notifications): both backends."""
    return servers.get(request.param)


@pytest.fixture
def sqlite_server(servers: Servers) -> LiveServer:
    """For validation and authentication, which never reach the database layer differently."""
    return servers.get("sqlite")


# One client for the module: building an httpx.Client per call costs tens of milliseconds.
HTTP = httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=50))


def call(server: LiveServer, who: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {**(server.headers(who) if who else {}), **kwargs.pop("headers", {})}
    return HTTP.request(method, server.url + path, headers=headers, **kwargs)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    err: dict[str, Any] = body["error"]
    return err


def submit(server: LiveServer, who: str = AGENT, action: str = "db.export", **body: Any) -> dict[str, Any]:
    payload = {"action": action, "resource": "postgres://prod/customers", "params": {"rows": 5000}, **body}
    answer: dict[str, Any] = ok(call(server, who, "POST", "/v1/actions", json=payload), 201)
    return answer


def review(
    server: LiveServer, who: str, request_id: str, decision: str = "approve", **body: Any
) -> httpx.Response:
    return call(server, who, "POST", f"/v1/actions/{request_id}/reviews", json={"decision": decision, **body})


def event_count(server: LiveServer) -> int:
    store = Store.open(server.database_url)
    try:
        return store.head_seq() + 1
    finally:
        store.close()


# --- submit -------------------------------------------------------------------------------------------


def test_submit_allow_returns_a_grant(server: LiveServer) -> None:
    answer = submit(server, action="test.allow")
    assert answer["status"] == "allowed"
    assert answer["grant"].count(".") == 2  # a signed JWT
    assert answer["verdict"]["decision"] == "allow"
    assert answer["verdict"]["rules"][0]["rule"] == "reads are free"
    assert answer["id"].startswith("req_")


def test_submit_deny_returns_the_reason_and_no_grant(sqlite_server: LiveServer) -> None:
    answer = submit(sqlite_server, action="test.deny")
    assert answer["status"] == "denied"
    assert answer["verdict"]["reason"] == "test.deny is never allowed"
    assert "grant" not in answer


def test_submit_review_is_pending_with_a_review_url_and_deadline(sqlite_server: LiveServer) -> None:
    answer = submit(sqlite_server)
    assert answer["status"] == "pending"
    assert "grant" not in answer
    assert answer["review_url"] == f"{sqlite_server.url}/v1/actions/{answer['id']}"
    assert answer["expires_at"] is not None
    assert answer["still_needed"] == ["1 from sre"]


def test_policy_deny_of_huge_export_beats_review(sqlite_server: LiveServer) -> None:
    answer = submit(sqlite_server, params={"rows": 2_000_000})
    assert answer["status"] == "denied"


def test_secrets_named_by_redact_never_come_back_in_clear(sqlite_server: LiveServer) -> None:
    answer = submit(sqlite_server, params={"rows": 1, "connection_string": "postgres://u:hunter2@db/prod"})
    assert "hunter2" not in str(answer)
    shown = ok(call(sqlite_server, ALICE, "GET", f"/v1/actions/{answer['id']}"))
    assert "hunter2" not in str(shown)


# --- idempotency --------------------------------------------------------------------------------------


def test_same_idempotency_key_gives_the_same_answer(server: LiveServer) -> None:
    body = {"action": "test.allow", "resource": "r", "params": {"a": 1}, "idempotency_key": "idem-allow-1"}
    first = ok(call(server, AGENT, "POST", "/v1/actions", json=body), 201)
    again = call(server, AGENT, "POST", "/v1/actions", json=body)
    assert again.status_code in (200, 201)
    second = again.json()
    assert second["id"] == first["id"]
    assert second["status"] == first["status"] == "allowed"
    assert second["grant"] == first["grant"]


def test_same_idempotency_key_with_another_body_is_a_conflict_naming_the_field(server: LiveServer) -> None:
    submit(server, idempotency_key="idem-2")
    err = error(
        call(server, AGENT, "POST", "/v1/actions", json={"action": "db.export", "idempotency_key": "idem-2"}),
        409,
    )
    assert err["detail"]["field"] == "idempotency_key"
    assert "idempotency_key" in err["message"]


def test_idempotency_keys_belong_to_one_requester(sqlite_server: LiveServer) -> None:
    mine = submit(sqlite_server, AGENT, idempotency_key="idem-3")
    theirs = submit(sqlite_server, EXECUTOR, idempotency_key="idem-3")
    assert mine["id"] != theirs["id"]


def test_concurrent_submits_with_one_key_make_one_request(server: LiveServer) -> None:
    body = {"action": "db.export", "params": {"rows": 7}, "idempotency_key": "idem-race"}
    ids: list[str] = []

    def go() -> None:
        response = call(server, AGENT, "POST", "/v1/actions", json=body)
        assert response.status_code in (200, 201), response.text
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1


# --- read ---------------------------------------------------------------------------------------------


def test_get_is_for_the_requester_and_approvers_only(sqlite_server: LiveServer) -> None:
    answer = submit(sqlite_server, on_behalf_of=OLIVIA)
    path = f"/v1/actions/{answer['id']}"
    mine = ok(call(sqlite_server, AGENT, "GET", path))
    assert [e["type"] for e in mine["history"]][:2] == ["request.submitted", "request.pending"]
    ok(call(sqlite_server, ALICE, "GET", path))  # in sre: an approver
    ok(call(sqlite_server, OLIVIA, "GET", path))  # the human the agent acts for
    ok(call(sqlite_server, ERIN, "GET", path))  # auditors read everything
    # not in the route's groups, another agent: the same 404 as for an id that does not exist
    for outsider in (CAROL, EXECUTOR):
        error(call(sqlite_server, outsider, "GET", path), 404, "not_found")
    error(call(sqlite_server, ALICE, "GET", "/v1/actions/req_doesnotexist"), 404, "not_found")


def test_review_queue_shows_only_what_the_caller_may_review(server: LiveServer) -> None:
    for_olivia = submit(server, on_behalf_of=OLIVIA)["id"]
    by_alice = submit(server, ALICE)["id"]  # a human requester
    reviewed = submit(server)["id"]
    critical = submit(server, action="k8s.delete", resource="k8s://prod/ns/payments")["id"]
    ok(review(server, ALICE, critical))  # alice has approved: not in her queue any more

    def queue(who: str) -> set[str]:
        page = ok(
            call(
                server,
                who,
                "GET",
                "/v1/actions",
                params={"status": "pending", "reviewable": "true", "limit": 200},
            )
        )
        assert all(item["status"] == "pending" for item in page["items"])
        return {item["id"] for item in page["items"]}

    alice, olivia, bob, carol = queue(ALICE), queue(OLIVIA), queue(BOB), queue(CAROL)
    # The queue asks the workflow's own question (workflow.may_review): the human the agent acts for may
    # not approve but may deny, so the request is in her queue — and only her deny is accepted.
    assert for_olivia in alice and for_olivia in olivia
    error(review(server, OLIVIA, for_olivia), 403, "on_behalf_of_cannot_approve")
    assert by_alice not in alice and by_alice in bob  # nobody reviews their own request
    assert critical not in alice and critical in bob and critical in carol
    assert reviewed in bob and reviewed not in carol  # carol is not in sre
    assert queue(AGENT) == set()  # agents review nothing
    ok(review(server, OLIVIA, for_olivia, "deny", comment="not what I asked my agent to do"))
    assert for_olivia not in queue(ALICE) | queue(OLIVIA)  # decided: in nobody's queue


def test_bad_list_parameters_are_4xx_naming_the_parameter(sqlite_server: LiveServer) -> None:
    err = error(call(sqlite_server, ALICE, "GET", "/v1/actions", params={"cursor": "garbage"}), 400)
    assert "cursor" in err["message"] or err["detail"].get("field") == "query.cursor"
    err = error(
        call(sqlite_server, ALICE, "GET", "/v1/actions", params={"status": "bogus"}), 422, "invalid_request"
    )
    assert err["detail"]["fields"][0]["field"] == "query.status"
    err = error(call(sqlite_server, ALICE, "GET", "/v1/actions", params={"limit": 0}), 422)
    assert err["detail"]["fields"][0]["field"] == "query.limit"


def test_pagination_walks_every_request_once(server: LiveServer) -> None:
    ids = {submit(server, EXECUTOR, action="test.deny")["id"] for _ in range(5)}
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = ok(call(server, EXECUTOR, "GET", "/v1/actions", params=params))
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen))
    assert ids <= set(seen)


# --- review -------------------------------------------------------------------------------------------


def test_approve_issues_a_grant_to_the_requester_only(server: LiveServer) -> None:
    request_id = submit(server)["id"]
    approved = ok(review(server, ALICE, request_id, comment="fine"))
    assert approved["status"] == "approved"
    assert "grant" not in approved  # the reviewer never holds the credential
    mine = ok(call(server, AGENT, "GET", f"/v1/actions/{request_id}"))
    assert mine["grant"].count(".") == 2
    assert [r["reviewer"] for r in mine["reviews"]] == [ALICE]
    types = [e["type"] for e in mine["history"]]
    assert types[-3:] == ["request.reviewed", "request.approved", "grant.issued"]


def test_review_refusals_map_to_clear_errors(sqlite_server: LiveServer) -> None:
    request_id = submit(sqlite_server, on_behalf_of=OLIVIA)["id"]
    error(review(sqlite_server, AGENT, request_id), 403, "forbidden")  # agents: human-only endpoint
    error(review(sqlite_server, OLIVIA, request_id), 403, "on_behalf_of_cannot_approve")
    error(review(sqlite_server, CAROL, request_id), 404, "not_found")  # not an approver: cannot even see it
    err = error(review(sqlite_server, ALICE, request_id, "deny"), 422, "reason_required")
    assert err["detail"]["field"] == "body.comment"
    err = error(review(sqlite_server, ALICE, request_id, "maybe"), 422, "invalid_request")
    assert err["detail"]["fields"][0]["field"] == "body.decision"
    own = submit(sqlite_server, ALICE)["id"]
    error(review(sqlite_server, ALICE, own), 403, "self_review")
    state = ok(call(sqlite_server, AGENT, "GET", f"/v1/actions/{request_id}"))
    assert state["status"] == "pending" and state["reviews"] == []


def test_a_step_up_route_refuses_a_token_approval_but_takes_a_deny(sqlite_server: LiveServer) -> None:
    request_id = submit(sqlite_server, action="deploy.prod", resource="k8s://prod/api")["id"]
    queue = ok(call(sqlite_server, ALICE, "GET", "/v1/actions", params={"reviewable": "true", "limit": 200}))
    assert request_id in {item["id"] for item in queue["items"]}  # offered: the console asks for presence
    err = error(review(sqlite_server, ALICE, request_id), 403, "step_up_required")
    assert "fresh login or a passkey" in err["message"]
    state = ok(call(sqlite_server, AGENT, "GET", f"/v1/actions/{request_id}"))
    assert state["status"] == "pending" and state["reviews"] == [] and state["verdict"]["step_up"] is True
    ok(review(sqlite_server, ALICE, request_id, "deny", comment="not during the incident"))


def test_one_person_cannot_fill_two_requirements(server: LiveServer) -> None:
    request_id = submit(server, action="k8s.delete", resource="k8s://prod/ns/x")["id"]
    ok(review(server, SAM, request_id))  # in sre and security: counts once
    error(review(server, SAM, request_id), 403, "already_reviewed")
    after_bob = ok(review(server, BOB, request_id))
    assert after_bob["status"] == "pending" and len(after_bob["still_needed"]) == 1
    final = ok(review(server, CAROL, request_id))
    assert final["status"] == "approved"
    assert sorted(r["reviewer"] for r in final["reviews"]) == sorted([SAM, BOB, CAROL])


def test_deny_with_reason_ends_the_request(sqlite_server: LiveServer) -> None:
    request_id = submit(sqlite_server)["id"]
    denied = ok(review(sqlite_server, ALICE, request_id, "deny", comment="not this quarter"))
    assert denied["status"] == "denied"
    error(review(sqlite_server, BOB, request_id), 409, "not_pending")
    waited = ok(call(sqlite_server, AGENT, "GET", f"/v1/actions/{request_id}/wait", params={"timeout": 5}))
    assert waited["status"] == "denied" and waited["reviews"][0]["comment"] == "not this quarter"


def test_edited_params_are_what_the_grant_binds(server: LiveServer) -> None:
    request_id = submit(server, params={"rows": 5000, "table": "customers"})["id"]
    err = error(review(server, ALICE, request_id, params={"table": "payments"}), 422, "edit_refused")
    assert "params.table" in err["message"]
    err = error(review(server, ALICE, request_id, params={"rows": 2_000_000}), 422, "edit_refused")
    assert "policy denies" in err["message"]
    approved = ok(review(server, ALICE, request_id, comment="500 is enough", params={"rows": 500}))
    assert approved["status"] == "approved"
    assert approved["approved_params"] == {"rows": 500, "table": "customers"}
    grant = ok(call(server, AGENT, "GET", f"/v1/actions/{request_id}"))["grant"]
    consumed = ok(call(server, EXECUTOR, "POST", "/v1/grants/consume", json={"grant": grant}))
    assert consumed["params"] == {"rows": 500, "table": "customers"}
    assert consumed["edited"] is True
    # alice may read the request, but only the executor or the requester report what happened
    result = {"status": "succeeded"}
    error(call(server, ALICE, "POST", f"/v1/actions/{request_id}/result", json=result), 403, "not_executor")
    ok(call(server, EXECUTOR, "POST", f"/v1/actions/{request_id}/result", json=result))
    history = ok(call(server, AGENT, "GET", f"/v1/actions/{request_id}"))["history"]
    edit = next(e for e in history if e["type"] == "request.params_edited")
    assert edit["payload"]["before"]["rows"] == 5000 and edit["payload"]["after"]["rows"] == 500


# --- cancel, consume, result --------------------------------------------------------------------------


def test_cancel_is_for_the_requester_of_a_pending_request(sqlite_server: LiveServer) -> None:
    request_id = submit(sqlite_server)["id"]
    error(call(sqlite_server, EXECUTOR, "POST", f"/v1/actions/{request_id}/cancel"), 404)
    error(
        call(sqlite_server, ALICE, "POST", f"/v1/actions/{request_id}/cancel", json={}), 403, "not_requester"
    )
    cancelled = ok(
        call(sqlite_server, AGENT, "POST", f"/v1/actions/{request_id}/cancel", json={"reason": "oops"})
    )
    assert cancelled["status"] == "cancelled"
    error(call(sqlite_server, AGENT, "POST", f"/v1/actions/{request_id}/cancel"), 409, "not_pending")
    error(review(sqlite_server, ALICE, request_id), 409, "not_pending")


def test_consume_exactly_once_then_report_the_result(server: LiveServer) -> None:
    answer = submit(server, action="test.allow", params={"x": 1})
    request_id, grant = answer["id"], answer["grant"]
    error(
        call(server, AGENT, "POST", f"/v1/actions/{request_id}/result", json={"status": "succeeded"}),
        409,
        "result_refused",
    )
    consumed = ok(call(server, EXECUTOR, "POST", "/v1/grants/consume", json={"grant": grant}))
    assert consumed == {
        "request_id": request_id,
        "status": "executing",
        "action": "test.allow",
        "resource": "postgres://prod/customers",
        "params": {"x": 1},
        "edited": False,
        "secrets": {},
    }
    error(
        call(server, EXECUTOR, "POST", "/v1/grants/consume", json={"grant": grant}),
        409,
        "grant_already_consumed",
    )
    # the grant is no longer handed out once consumed
    assert "grant" not in ok(call(server, AGENT, "GET", f"/v1/actions/{request_id}"))
    digest = "sha256:" + "ab" * 32
    body = {"status": "succeeded", "output_digest": digest, "detail": "42 rows"}
    error(call(server, ALICE, "POST", f"/v1/actions/{request_id}/result", json=body), 404)
    done = ok(call(server, EXECUTOR, "POST", f"/v1/actions/{request_id}/result", json=body))
    assert done["status"] == "succeeded" and done["result"]["output_digest"] == digest
    error(
        call(server, EXECUTOR, "POST", f"/v1/actions/{request_id}/result", json=body), 409, "result_refused"
    )
    err = error(call(server, AGENT, "POST", f"/v1/actions/{request_id}/result", json={"status": "ok"}), 422)
    assert err["detail"]["fields"][0]["field"] == "body.status"


def test_forged_and_garbage_grants_are_refused(sqlite_server: LiveServer) -> None:
    grant = submit(sqlite_server, action="test.allow")["grant"]
    header, payload, signature = grant.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    for token in (forged, "not-a-token", f"{header}.{payload}."):
        err = error(call(sqlite_server, EXECUTOR, "POST", "/v1/grants/consume", json={"grant": token}), 403)
        assert err["detail"]["field"] == "grant"
    err = error(call(sqlite_server, EXECUTOR, "POST", "/v1/grants/consume", json={}), 422)
    assert err["detail"]["fields"][0]["field"] == "body.grant"
    # the real one still works once
    ok(call(sqlite_server, EXECUTOR, "POST", "/v1/grants/consume", json={"grant": grant}))


# --- wait and events ----------------------------------------------------------------------------------


def test_wait_returns_promptly_after_a_review(server: LiveServer) -> None:
    request_id = submit(server)["id"]
    result: dict[str, Any] = {}

    def waiter() -> None:
        response = call(server, AGENT, "GET", f"/v1/actions/{request_id}/wait", params={"timeout": 30})
        result["answer"] = response.json()
        result["at"] = time.monotonic()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)  # let the long-poll subscribe (not a timing assert)
    assert thread.is_alive(), "wait returned before anyone reviewed"
    reviewed_at = time.monotonic()
    ok(review(server, ALICE, request_id))
    thread.join(10)
    assert result["answer"]["status"] == "approved"
    assert result["answer"]["timed_out"] is False
    assert "grant" in result["answer"]
    assert result["at"] - reviewed_at < 2.0


def test_wait_times_out_on_a_pending_request(sqlite_server: LiveServer) -> None:
    request_id = submit(sqlite_server)["id"]
    answer = ok(call(sqlite_server, AGENT, "GET", f"/v1/actions/{request_id}/wait", params={"timeout": 0.2}))
    assert answer["status"] == "pending" and answer["timed_out"] is True
    error(call(sqlite_server, AGENT, "GET", f"/v1/actions/{request_id}/wait", params={"timeout": -1}), 422)
    error(call(sqlite_server, EXECUTOR, "GET", f"/v1/actions/{request_id}/wait", params={"timeout": 0}), 404)


def test_events_stream_the_transitions(server: LiveServer) -> None:
    request_id = submit(server)["id"]
    seen: list[dict[str, Any]] = []
    with httpx.Client(base_url=server.url, headers=server.headers(AGENT), timeout=30.0) as client:  # noqa: SIM117
        with connect_sse(client, "GET", f"/v1/actions/{request_id}/events") as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for sse in source.iter_sse():
                if sse.event != "state":
                    continue
                seen.append(sse.json())
                if len(seen) == 1:
                    assert seen[0]["status"] == "pending"
                    ok(review(server, ALICE, request_id))
                if seen[-1]["status"] != "pending":
                    break
    assert seen[-1]["status"] == "approved"
    assert seen[-1]["history"][-1]["type"] == "grant.issued"
    error(call(server, EXECUTOR, "GET", f"/v1/actions/{request_id}/events"), 404)


# --- authentication -----------------------------------------------------------------------------------


def test_no_or_bad_credentials_are_401(sqlite_server: LiveServer) -> None:
    err = error(
        call(sqlite_server, None, "POST", "/v1/actions", json={"action": "test.allow"}),
        401,
        "unauthenticated",
    )
    assert "Authorization" in err["message"]
    response = HTTP.get(sqlite_server.url + "/v1/actions", headers={"Authorization": "Bearer kt_nope_nope"})
    error(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_requester_comes_from_the_token_never_the_body(sqlite_server: LiveServer) -> None:
    body = {"action": "db.export", "requester": {"id": ALICE, "kind": "human", "groups": ["sre"]}}
    err = error(call(sqlite_server, AGENT, "POST", "/v1/actions", json=body), 422, "invalid_request")
    assert err["detail"]["fields"][0]["field"] == "body.requester"
    answer = submit(sqlite_server, AGENT)
    assert answer["requester"] == {"id": AGENT, "kind": "agent"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": ""}, "body.action"),
        ({"action": "has spaces"}, "body.action"),
        ({"action": "db.export", "params": [1, 2]}, "body.params"),
        ({"action": "db.export", "idempotency_key": ""}, "body.idempotency_key"),
        ({}, "body.action"),
    ],
)
def test_malformed_submits_name_the_field(
    sqlite_server: LiveServer, body: dict[str, Any], field: str
) -> None:
    err = error(call(sqlite_server, AGENT, "POST", "/v1/actions", json=body), 422, "invalid_request")
    assert err["detail"]["fields"][0]["field"] == field


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b'{"action": "a.b", "context": {"n": 9007199254740993}}', "body.context", "context.n: integer"),
        (b'{"action": "a.b", "params": {"x": [1, NaN]}}', "body.params", "params.x[1]: nan"),
        (
            b'{"action": "a.b", "params": {"x": [-2.8324253775122796e16]}}',
            "body.params",
            "params.x[0]: number",
        ),
        (b'{"action": "a.b", "params": {"k": "\\ud800"}}', "body.params", "lone surrogate"),
        (
            b'{"action": "a.b", "params": {"x": ' + b"[" * 100 + b"]" * 100 + b"}}",
            "body.params",
            "deeper than",
        ),
    ],
    ids=["huge-int", "nan", "huge-float", "lone-surrogate", "deep"],
)
def test_values_that_cannot_be_canonical_json_are_refused_not_500(
    sqlite_server: LiveServer, raw: bytes, field: str, words: str
) -> None:
    # every body ends up in RFC 8785 digests and ledger leaves: what cannot be canonicalised is a 422
    for path in ("/v1/actions", "/v1/evaluate"):
        response = call(
            sqlite_server, AGENT, "POST", path, content=raw, headers={"content-type": "application/json"}
        )
        err = error(response, 422, "invalid_request")
        assert err["detail"]["fields"][0]["field"] == field
        assert words in err["message"], err["message"]


def test_a_body_that_is_not_json_is_a_4xx(sqlite_server: LiveServer) -> None:
    response = call(
        sqlite_server,
        AGENT,
        "POST",
        "/v1/actions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    err = error(response, 422, "invalid_request")
    assert err["detail"]["fields"][0]["field"].startswith("body")


def test_evaluate_is_a_dry_run(server: LiveServer) -> None:
    before = event_count(server)
    answer = ok(
        call(server, AGENT, "POST", "/v1/evaluate", json={"action": "k8s.delete", "resource": "k8s://x"})
    )
    assert answer["decision"] == "review"
    assert answer["approvers"] == "2 from sre and 1 from security"
    as_other = ok(
        call(
            server,
            ALICE,
            "POST",
            "/v1/evaluate",
            json={"action": "db.export", "params": {"rows": 2_000_000}, "requester": {"id": "agent:x"}},
        )
    )
    assert as_other["decision"] == "deny"
    assert event_count(server) == before
    err = error(call(server, AGENT, "POST", "/v1/evaluate", json={"action": "db.export", "params": "x"}), 422)
    assert err["detail"]["fields"][0]["field"] == "body.params"
    err = error(call(server, AGENT, "POST", "/v1/evaluate", json={"action": "a.b", "now": "yesterday"}), 400)
    assert err["detail"]["field"] == "body.now"


# --- system endpoints ---------------------------------------------------------------------------------


def test_keys_are_a_jwk_set_that_verifies_grants(sqlite_server: LiveServer) -> None:
    jwks = ok(HTTP.get(sqlite_server.url + "/v1/keys"))  # public: no credentials needed
    assert jwks["keys"]
    assert all(key["kty"] == "OKP" and key["crv"] == "Ed25519" and "d" not in key for key in jwks["keys"])
    grant = submit(sqlite_server, action="test.allow")["grant"]
    kid = jwt.get_unverified_header(grant)["kid"]
    key = next(k for k in jwks["keys"] if k["kid"] == kid)
    claims = jwt.decode(
        grant,
        jwt.PyJWK(key).key,
        algorithms=["EdDSA"],
        audience="keyturn-executor",
        options={"verify_exp": True},
    )
    assert claims["act"] == "test.allow"


def test_health_and_readiness(sqlite_server: LiveServer) -> None:
    assert ok(HTTP.get(sqlite_server.url + "/healthz")) == {"status": "ok"}
    ready = ok(HTTP.get(sqlite_server.url + "/readyz"))
    assert ready["status"] == "ready" and ready["problems"] == []
    revision = submit(sqlite_server, action="test.allow")["verdict"]["policy_revision"]
    assert ready["policy_revision"] == revision and revision.startswith("sha256:")


def test_metrics_are_prometheus_text(sqlite_server: LiveServer) -> None:
    submit(sqlite_server, action="test.deny")
    response = HTTP.get(sqlite_server.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'keyturn_requests_total{decision="deny"}' in response.text


def test_openapi_lists_every_endpoint(sqlite_server: LiveServer) -> None:
    spec = ok(HTTP.get(sqlite_server.url + "/openapi.json"))
    paths = spec["paths"]
    for path, method in [
        ("/v1/actions", "post"),
        ("/v1/actions", "get"),
        ("/v1/actions/{request_id}", "get"),
        ("/v1/actions/{request_id}/wait", "get"),
        ("/v1/actions/{request_id}/events", "get"),
        ("/v1/actions/{request_id}/reviews", "post"),
        ("/v1/actions/{request_id}/cancel", "post"),
        ("/v1/actions/{request_id}/result", "post"),
        ("/v1/grants/consume", "post"),
        ("/v1/evaluate", "post"),
        ("/v1/keys", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from /openapi.json"
