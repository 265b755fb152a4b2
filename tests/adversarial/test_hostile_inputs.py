"""Hostile input against real `keyturn serve` processes, on SQLite and on PostgreSQL (issue #13 §1).

Some hundred hand-made bodies, strings, URLs and headers: huge, deep, NUL, lone surrogates, wrong types,
Unicode tricks, huge numbers, duplicate keys, bad cursors, bad content types. None may get a 5xx; the
same input gets the same answer on both backends; size limits are answered 413/422 naming the limit; and
a small request still answers while several 1 MB bodies are in flight.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from conftest import fresh_postgres_schema
from support.live import LiveServer, start_server

AGENT = "agent:deploy-bot"
ALICE = "user:alice@example.com"
ERIN = "user:erin@example.com"  # auditor

MAX_BODY = 1 << 20


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp(f"hostile-{request.param}")
    if request.param == "sqlite":
        live = start_server(workdir, timeout=120)
        try:
            yield live
        finally:
            live.stop()
        return
    with fresh_postgres_schema() as url:
        live = start_server(workdir, database_url=url, timeout=120)
        try:
            yield live
        finally:
            live.stop()


@pytest.fixture(scope="module")
def request_id(server: LiveServer) -> str:
    with server.client(AGENT) as agent:
        answer: str = agent.submit("db.export", "postgres://prod/customers", {"rows": 5})["id"]
    return answer


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str  # {id} is replaced by a real request id
    body: bytes | None = None
    who: str | None = AGENT
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)

    def send(self, server: LiveServer, request_id: str) -> httpx.Response:
        headers = {name: value.encode("latin-1") for name, value in self.headers}  # bytes: any octet
        if self.who is not None:
            headers["authorization"] = f"Bearer {server.tokens[self.who]}".encode()
        return httpx.request(
            self.method,
            server.url + self.path.replace("{id}", request_id),
            content=self.body,
            headers=headers,
            timeout=30.0,
        )


def submit(**fields: Any) -> bytes:
    body = {"action": "db.export", "resource": "postgres://prod/x", "params": {"rows": 1}, **fields}
    return json.dumps(body).encode()


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


HOSTILE: list[Case] = [
    # --- NUL (PostgreSQL refuses it in text: it must never reach the database) ---
    Case("nul in resource", "POST", "/v1/actions", submit(resource="a\x00b")),
    Case("nul in idempotency_key", "POST", "/v1/actions", submit(idempotency_key="k\x00")),
    Case("nul in on_behalf_of", "POST", "/v1/actions", submit(on_behalf_of="user:a\x00@x")),
    Case("nul in justification", "POST", "/v1/actions", submit(justification="\x00")),
    Case("nul in action", "POST", "/v1/actions", submit(action="db.\x00")),
    Case("nul in a param value", "POST", "/v1/actions", submit(params={"rows": 1, "s": "\x00"})),
    Case("nul in a param key", "POST", "/v1/actions", submit(params={"\x00": 1})),
    Case("nul in context", "POST", "/v1/actions", submit(context={"env": "\x00"})),
    Case("nul in path id", "GET", "/v1/actions/%00", who=ALICE),
    Case("nul in events path", "GET", "/v1/actions/%00/events", who=ALICE),
    Case("nul in wait path", "GET", "/v1/actions/%00/wait?timeout=0", who=AGENT),
    Case("nul in reviews path", "POST", "/v1/actions/%00/reviews", b'{"decision":"approve"}', ALICE),
    Case("nul in cancel path", "POST", "/v1/actions/%00/cancel", b"{}"),
    Case("nul in result path", "POST", "/v1/actions/%00/result", b'{"status":"succeeded"}'),
    Case("nul in cursor", "GET", "/v1/actions?cursor=%00", who=ALICE),
    Case("nul in ledger request_id", "GET", "/v1/ledger/events?request_id=%00", who=ERIN),
    Case("nul in ledger type", "GET", "/v1/ledger/events?type=%00", who=ERIN),
    Case(
        "nul in review comment",
        "POST",
        "/v1/actions/{id}/reviews",
        b'{"decision":"deny","comment":"\\u0000"}',
        ALICE,
    ),
    Case("nul in cancel reason", "POST", "/v1/actions/{id}/cancel", b'{"reason":"\\u0000"}'),
    Case("nul in grant", "POST", "/v1/grants/consume", b'{"grant":"a\\u0000b"}'),
    Case("nul in query name", "GET", "/v1/actions?%00=1", who=ALICE),
    # --- lone surrogates and Unicode tricks ---
    Case(
        "lone surrogate in resource",
        "POST",
        "/v1/actions",
        raw('{"action":"db.export","resource":"\\ud800"}'),
    ),
    Case(
        "lone low surrogate in params",
        "POST",
        "/v1/actions",
        raw('{"action":"db.export","params":{"a":"\\udc00"}}'),
    ),
    Case("surrogate in key", "POST", "/v1/actions", raw('{"action":"db.export","params":{"\\ud800":1}}')),
    Case("raw invalid utf-8", "POST", "/v1/actions", b'{"action":"db.export","resource":"\xff\xfe"}'),
    Case("overlong utf-8", "POST", "/v1/actions", b'{"action":"db.export","resource":"\xc0\xaf"}'),
    Case("bom before body", "POST", "/v1/actions", b"\xef\xbb\xbf" + submit()),
    Case("rtl override in resource", "POST", "/v1/actions", submit(resource="prod\u202etxt.exe")),
    Case("zero width in action", "POST", "/v1/actions", submit(action="db\u200b.export")),
    Case("homoglyph action", "POST", "/v1/actions", submit(action="db.\u0435xport")),
    Case("fullwidth on_behalf_of", "POST", "/v1/actions", submit(on_behalf_of="user:\uff41lice@example.com")),
    Case("combining marks", "POST", "/v1/actions", submit(justification="a" + "\u0301" * 5000)),
    Case("emoji everywhere", "POST", "/v1/actions", submit(resource="🔥" * 500, params={"🔑": "🗝" * 100})),
    Case("unicode line separators", "POST", "/v1/actions", submit(resource="a\u2028b\u2029c")),
    Case("control characters", "POST", "/v1/actions", submit(resource="".join(chr(i) for i in range(1, 32)))),
    Case("escaped slash games", "POST", "/v1/actions", b'{"action":"db\\/export"}'),
    Case("non-ascii path id", "GET", "/v1/actions/%C3%A9%E2%80%AE", who=ALICE),
    Case("invalid utf-8 path id", "GET", "/v1/actions/%FF%FE", who=ALICE),
    Case("percent-encoded slash id", "GET", "/v1/actions/a%2F..%2F..%2Fetc", who=ALICE),
    # --- wrong types ---
    Case("body is an array", "POST", "/v1/actions", b"[]"),
    Case("body is a string", "POST", "/v1/actions", b'"db.export"'),
    Case("body is null", "POST", "/v1/actions", b"null"),
    Case("body is a number", "POST", "/v1/actions", b"42"),
    Case("action is a number", "POST", "/v1/actions", b'{"action":1}'),
    Case("action is a list", "POST", "/v1/actions", b'{"action":["db.export"]}'),
    Case("params is a list", "POST", "/v1/actions", b'{"action":"db.export","params":[1,2]}'),
    Case("params is a string", "POST", "/v1/actions", b'{"action":"db.export","params":"{}"}'),
    Case("context is null", "POST", "/v1/actions", b'{"action":"db.export","context":null}'),
    Case("resource is an object", "POST", "/v1/actions", b'{"action":"db.export","resource":{}}'),
    Case("idempotency_key is a number", "POST", "/v1/actions", b'{"action":"db.export","idempotency_key":7}'),
    Case("unknown field", "POST", "/v1/actions", b'{"action":"db.export","requester":"agent:root"}'),
    Case("review decision wrong", "POST", "/v1/actions/{id}/reviews", b'{"decision":"maybe"}', ALICE),
    Case(
        "review params a list",
        "POST",
        "/v1/actions/{id}/reviews",
        b'{"decision":"approve","params":[]}',
        ALICE,
    ),
    Case("result status wrong", "POST", "/v1/actions/{id}/result", b'{"status":"exploded"}'),
    Case(
        "result digest wrong",
        "POST",
        "/v1/actions/{id}/result",
        b'{"status":"failed","output_digest":"md5:x"}',
    ),
    Case("grant is a number", "POST", "/v1/grants/consume", b'{"grant":12}'),
    Case("grant is garbage", "POST", "/v1/grants/consume", b'{"grant":"a.b.c"}'),
    Case("grant is huge", "POST", "/v1/grants/consume", json.dumps({"grant": "x" * 9000}).encode()),
    Case(
        "evaluate requester kind wrong",
        "POST",
        "/v1/evaluate",
        b'{"action":"db.export","requester":{"id":"a","kind":"root"}}',
    ),
    Case("evaluate now garbage", "POST", "/v1/evaluate", b'{"action":"db.export","now":"yesterday"}'),
    Case("evaluate now naive", "POST", "/v1/evaluate", b'{"action":"db.export","now":"2030-01-01T00:00:00"}'),
    Case(
        "evaluate now huge year",
        "POST",
        "/v1/evaluate",
        b'{"action":"db.export","now":"99999-01-01T00:00:00+00:00"}',
    ),
    # --- numbers ---
    Case(
        "huge integer param",
        "POST",
        "/v1/actions",
        b'{"action":"db.export","params":{"rows":' + b"9" * 4000 + b"}}",
    ),
    Case(
        "integer over int digits limit",
        "POST",
        "/v1/actions",
        b'{"action":"db.export","params":{"rows":' + b"9" * 5000 + b"}}",
    ),
    Case(
        "integer past 2^53",
        "POST",
        "/v1/actions",
        b'{"action":"db.export","params":{"rows":9007199254740993}}',
    ),
    Case("float overflow", "POST", "/v1/actions", b'{"action":"db.export","params":{"rows":1e999}}'),
    Case("nan literal", "POST", "/v1/actions", b'{"action":"db.export","params":{"rows":NaN}}'),
    Case("infinity literal", "POST", "/v1/actions", b'{"action":"db.export","params":{"rows":-Infinity}}'),
    Case("negative zero", "POST", "/v1/actions", b'{"action":"db.export","params":{"rows":-0.0}}'),
    Case("tiny float", "POST", "/v1/actions", b'{"action":"db.export","params":{"rows":5e-324}}'),
    Case("wait timeout huge", "GET", "/v1/actions/{id}/wait?timeout=1e308"),
    Case("wait timeout nan", "GET", "/v1/actions/{id}/wait?timeout=nan"),
    Case("wait timeout negative", "GET", "/v1/actions/{id}/wait?timeout=-1"),
    Case("list limit huge", "GET", "/v1/actions?limit=99999999999999999999999", who=ALICE),
    Case("ledger after_seq huge", "GET", "/v1/ledger/events?after_seq=99999999999999999999999", who=ERIN),
    Case("ledger after_seq 2^63", "GET", "/v1/ledger/events?after_seq=9223372036854775808", who=ERIN),
    Case("proof seq huge", "GET", "/v1/ledger/proof/inclusion?seq=9223372036854775807", who=ERIN),
    Case("consistency huge", "GET", "/v1/ledger/proof/consistency?from=1&to=9223372036854775807", who=ERIN),
    Case("ledger since garbage", "GET", "/v1/ledger/events?since=notatime", who=ERIN),
    Case("ledger since naive", "GET", "/v1/ledger/events?since=2030-01-01T00:00:00", who=ERIN),
    # --- structure ---
    Case("duplicate keys", "POST", "/v1/actions", b'{"action":"test.deny","action":"test.allow"}'),
    Case(
        "duplicate param keys",
        "POST",
        "/v1/actions",
        b'{"action":"db.export","params":{"rows":1,"rows":2000000}}',
    ),
    Case(
        "deep params 33",
        "POST",
        "/v1/actions",
        b'{"action":"db.export","params":{"a":' + nested(33).encode() + b"}}",
    ),
    Case(
        "deep params 5000",
        "POST",
        "/v1/actions",
        b'{"action":"db.export","params":{"a":' + nested(5000).encode() + b"}}",
    ),
    Case("deep body 100000", "POST", "/v1/actions", nested(100_000).encode()),
    Case(
        "deep objects",
        "POST",
        "/v1/actions",
        b'{"action":"db.export","context":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
    ),
    Case("many params", "POST", "/v1/actions", submit(params={f"k{i}": i for i in range(20_000)})),
    Case("long list", "POST", "/v1/actions", submit(params={"xs": list(range(50_000))})),
    Case("long key", "POST", "/v1/actions", submit(params={"k" * 5000: 1})),
    Case("long string param", "POST", "/v1/actions", submit(params={"note": "x" * 70_000})),
    Case("long resource", "POST", "/v1/actions", submit(resource="r" * 100_000)),
    Case("long justification", "POST", "/v1/actions", submit(justification="j" * 200_000)),
    Case("long action", "POST", "/v1/actions", submit(action="a" * 5000)),
    Case(
        "many groups",
        "POST",
        "/v1/evaluate",
        json.dumps({"action": "db.export", "requester": {"id": "a", "groups": ["g"] * 1000}}).encode(),
    ),
    Case("truncated json", "POST", "/v1/actions", b'{"action":"db.export","params":{'),
    Case("trailing garbage", "POST", "/v1/actions", submit() + b"}}}"),
    Case("two documents", "POST", "/v1/actions", submit() + submit()),
    Case("empty body", "POST", "/v1/actions", b""),
    Case("whitespace body", "POST", "/v1/actions", b"   \n\t  "),
    Case("comment in json", "POST", "/v1/actions", b'{"action":"db.export" /* hi */}'),
    Case("single quotes", "POST", "/v1/actions", b"{'action':'db.export'}"),
    # --- content types and methods ---
    Case(
        "form body",
        "POST",
        "/v1/actions",
        b"action=db.export",
        headers=(("content-type", "application/x-www-form-urlencoded"),),
    ),
    Case("text body", "POST", "/v1/actions", submit(), headers=(("content-type", "text/plain"),)),
    Case("no content type", "POST", "/v1/actions", submit(), headers=()),
    Case(
        "xml body",
        "POST",
        "/v1/actions",
        b"<action>db.export</action>",
        headers=(("content-type", "application/xml"),),
    ),
    Case(
        "multipart garbage",
        "POST",
        "/v1/actions",
        b"--x\r\n\r\n",
        headers=(("content-type", "multipart/form-data; boundary=x"),),
    ),
    Case(
        "json with charset latin1",
        "POST",
        "/v1/actions",
        submit(),
        headers=(("content-type", "application/json; charset=latin-1"),),
    ),
    Case(
        "json with weird charset",
        "POST",
        "/v1/actions",
        submit(),
        headers=(("content-type", "application/json; charset=utf-7"),),
    ),
    Case(
        "gzip claimed",
        "POST",
        "/v1/actions",
        submit(),
        headers=(("content-type", "application/json"), ("content-encoding", "gzip")),
    ),
    Case("put on collection", "PUT", "/v1/actions", submit()),
    Case("delete a request", "DELETE", "/v1/actions/{id}", who=ALICE),
    Case("trace", "TRACE", "/v1/actions"),
    # --- credentials and headers ---
    Case("no credentials", "POST", "/v1/actions", submit(), who=None),
    Case(
        "bearer garbage",
        "POST",
        "/v1/actions",
        submit(),
        who=None,
        headers=(("authorization", "Bearer \u00e9\u00e9"),),
    ),
    Case(
        "bearer huge",
        "POST",
        "/v1/actions",
        submit(),
        who=None,
        headers=(("authorization", "Bearer " + "a" * 60_000),),
    ),
    Case("basic auth", "POST", "/v1/actions", submit(), who=None, headers=(("authorization", "Basic YTpi"),)),
    Case(
        "api key garbage",
        "POST",
        "/v1/actions",
        submit(),
        who=None,
        headers=(("x-api-key", "kt_" + "z" * 300),),
    ),
    Case(
        "api key latin1",
        "POST",
        "/v1/actions",
        submit(),
        who=None,
        headers=(("x-api-key", "kt_\u00ff\u00fe"),),
    ),
    Case(
        "jwt alg none",
        "GET",
        "/v1/actions",
        who=None,
        headers=(("authorization", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),),
    ),
    # --- cursors and paging ---
    Case("cursor garbage", "GET", "/v1/actions?cursor=!!!", who=ALICE),
    Case("cursor base64 of junk", "GET", "/v1/actions?cursor=aGVsbG8", who=ALICE),
    Case("cursor naive time", "GET", "/v1/actions?cursor=MjAzMC0wMS0wMVQwMDowMDowMHxy", who=ALICE),
    Case("cursor huge year", "GET", "/v1/actions?cursor=OTk5OTktMDEtMDFUMDA6MDA6MDArMDA6MDB8cg", who=ALICE),
    Case("cursor too long", "GET", "/v1/actions?cursor=" + "A" * 5000, who=ALICE),
    Case("status unknown", "GET", "/v1/actions?status=exploded", who=ALICE),
    Case("reviewable not bool", "GET", "/v1/actions?reviewable=perhaps", who=ALICE),
    Case("repeated params", "GET", "/v1/actions?limit=1&limit=2&limit=x", who=ALICE),
    Case("ledger type huge", "GET", "/v1/ledger/events?type=" + "t" * 10_000, who=ERIN),
    Case("ledger request_id huge", "GET", "/v1/ledger/events?request_id=" + "r" * 10_000, who=ERIN),
    Case("path id huge", "GET", "/v1/actions/" + "r" * 8000, who=ALICE),
    Case("path traversal", "GET", "/v1/actions/../../etc/passwd", who=ALICE),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_input_never_gets_a_5xx(server: LiveServer, request_id: str, case: Case) -> None:
    response = case.send(server, request_id)
    assert response.status_code < 500, f"{case.name}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith(
        "application/json"
    ):
        error = response.json()["error"]
        assert error["code"] and error["message"], response.text


def test_there_are_about_a_hundred_hostile_cases() -> None:
    assert len(HOSTILE) >= 100
    assert len({c.name for c in HOSTILE}) == len(HOSTILE)


# --- the answers that must be exactly these, on both backends --------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (submit(resource="a\x00b"), "body.resource"),
        (submit(idempotency_key="k\x00"), "body.idempotency_key"),
        (submit(on_behalf_of="user:a\x00@x"), "body.on_behalf_of"),
    ],
)
def test_nul_in_a_body_field_is_the_same_422_on_both_backends(
    server: LiveServer, body: bytes, field: str
) -> None:
    response = httpx.post(
        server.url + "/v1/actions", content=body, headers=_json(server, AGENT), timeout=30.0
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["detail"]["fields"][0]["field"] == field
    assert "U+0000" in error["message"]


@pytest.mark.parametrize(
    ("path", "who", "where"),
    [
        ("/v1/actions/%00", ALICE, "path"),
        ("/v1/actions/%00/events", ALICE, "path"),
        ("/v1/actions/%00/wait?timeout=0", AGENT, "path"),
        ("/v1/actions?cursor=%00", ALICE, "query.cursor"),
        ("/v1/ledger/events?request_id=%00", ERIN, "query.request_id"),
    ],
)
def test_nul_in_a_url_is_the_same_422_on_both_backends(
    server: LiveServer, path: str, who: str, where: str
) -> None:
    response = httpx.get(server.url + path, headers=server.headers(who), timeout=30.0)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["detail"]["field"] == where


def test_a_body_over_the_limit_is_refused_413_before_it_is_read(server: LiveServer) -> None:
    """Declared length over the limit: answered at once, while the client has sent only its head."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = (
            f"POST /v1/actions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {server.tokens[AGENT]}\r\nContent-Length: {6 * MAX_BODY}\r\n\r\n"
        )
        sock.sendall(head.encode())
        received = b""
        while chunk := sock.recv(65536):  # no body byte was sent; the server answers and closes
            received += chunk
        answer = received.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer
    assert '"payload_too_large"' in answer and "max_body_bytes" in answer


def test_a_chunked_body_over_the_limit_is_refused_413(server: LiveServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"action":"db.export","params":{"note":"'
        for _ in range(8):
            yield b"x" * (MAX_BODY // 4)
        yield b'"}}'

    response = httpx.post(
        server.url + "/v1/actions", content=chunks(), headers=_json(server, AGENT), timeout=30.0
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_six_megabyte_param_is_refused(server: LiveServer) -> None:
    response = httpx.post(
        server.url + "/v1/actions",
        content=submit(params={"note": "x" * 6_000_000}),
        headers=_json(server, AGENT),
        timeout=30.0,
    )
    assert response.status_code == 413, response.text


@pytest.mark.parametrize(
    ("params", "limit"),
    [
        ({"note": "x" * 70_000}, "max_string_chars"),
        ({"k" * 300: 1}, "max_key_chars"),
        ({f"k{i}": i for i in range(10_001)}, "max_json_values"),
        ({"a": json.loads(nested(40))}, "max_json_depth"),
    ],
    ids=["string", "key", "count", "depth"],
)
def test_params_over_a_limit_get_422_naming_the_limit_and_field(
    server: LiveServer, params: dict[str, Any], limit: str
) -> None:
    response = httpx.post(
        server.url + "/v1/actions", content=submit(params=params), headers=_json(server, AGENT), timeout=30.0
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert limit in error["message"] and error["detail"]["fields"][0]["field"] == "body.params"


def test_a_small_request_answers_while_one_megabyte_bodies_are_in_flight(server: LiveServer) -> None:
    """Six clients keep sending ~1 MB bodies (just under and just over the limit) while a seventh makes
    small calls: every small call answers (within a generous bound) and nothing gets a 5xx."""
    stop = threading.Event()
    big_statuses: list[int] = []
    near_limit = submit(params={f"n{i}": "y" * 60_000 for i in range(16)})  # ~960 KB: accepted, parsed
    over_limit = submit(params={"n": "z" * (MAX_BODY + 10)})

    def big(body: bytes) -> None:
        with httpx.Client(timeout=60.0) as http:
            while not stop.is_set():
                r = http.post(server.url + "/v1/actions", content=body, headers=_json(server, AGENT))
                big_statuses.append(r.status_code)

    threads = [threading.Thread(target=big, args=(near_limit if i % 2 else over_limit,)) for i in range(6)]
    for thread in threads:
        thread.start()
    small_answers = []
    try:
        time.sleep(0.5)
        with server.client(AGENT, timeout=2.0) as agent:
            for _ in range(10):
                small_answers.append(agent.submit("test.allow", "svc://small", {"n": 1})["status"])
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert small_answers == ["allowed"] * 10
    assert big_statuses and all(s < 500 for s in big_statuses), big_statuses
    assert {413, 201} & set(big_statuses), big_statuses


def _json(server: LiveServer, who: str) -> dict[str, str]:
    return {**server.headers(who), "content-type": "application/json"}
