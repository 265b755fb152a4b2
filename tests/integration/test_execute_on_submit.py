"""`POST /v1/actions` with `execute: true`: an allowed action comes back with its grant already consumed,
in the same transaction as the decision, and single-use and the ledger's story are exactly as strong as on
the submit → consume → report path. Real server over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from conftest import fresh_postgres_schema
from keyturn.config import load_settings
from keyturn.server.startup import key_encryption_key, open_keyring
from keyturn.service import Keyturn
from keyturn.store import Store
from support.live import LiveServer, keyturn_executable, start_server

AGENT = "agent:deploy-bot"
OTHER_AGENT = "agent:exec-bot"
ALICE = "user:alice@example.com"

POLICY = """\
version: 1
defaults: {decision: review, approvers: [sre], ttl: 1h}
rules:
  - name: reads are free
    match: {action: "*.read"}
    decision: allow
  - name: deploys carry the token
    match: {action: deploy.run}
    decision: allow
    secrets: [DEPLOY_TOKEN]
  - name: migrations need a secret nobody configured
    match: {action: db.migrate}
    decision: allow
    secrets: [MISSING_SECRET]
  - name: the runner runs releases
    match: {action: release.cut}
    decision: allow
    executors: [agent:exec-bot]
  - name: drops never
    match: {action: db.drop}
    decision: deny
    reason: never
"""


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("execute")
    secret_file = workdir / "deploy-token"
    secret_file.write_text("s3cr3t-deploy-value\n")
    with contextlib.ExitStack() as stack:
        database_url = (
            f"sqlite:///{workdir / 'keyturn.db'}"
            if request.param == "sqlite"
            else stack.enter_context(fresh_postgres_schema())
        )
        live = start_server(
            workdir / "server",
            database_url=database_url,
            policy=POLICY,
            timeout=120,  # a loaded machine
            settings={
                "secrets": {"DEPLOY_TOKEN": {"file": str(secret_file)}, "MISSING_SECRET": {"env": "KT_NOPE"}}
            },
        )
        stack.callback(live.stop)
        yield live


def post(server: LiveServer, path: str, body: dict[str, Any], who: str = AGENT) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=server.headers(who), timeout=30)


def submit(server: LiveServer, action: str, **fields: Any) -> dict[str, Any]:
    answer = post(server, "/v1/actions", {"action": action, "resource": "svc://x", **fields})
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def history(server: LiveServer, request_id: str) -> list[str]:
    view = httpx.get(f"{server.url}/v1/actions/{request_id}", headers=server.headers(AGENT), timeout=30)
    return [event["type"] for event in view.json()["history"]]


def mint_grant(server: LiveServer, request_id: str) -> str:
    """A validly signed token for the request's (consumed) grant, made with the server's own keys: what a
    stolen or replayed token would be."""
    settings = load_settings(server.config_path)
    store = Store.open(settings.database)
    try:
        keyring = open_keyring(settings, store, key_encryption_key(settings))
        svc = Keyturn(settings, store, None, keyring)  # type: ignore[arg-type]  # no policy needed
        record = store.get(request_id)
        assert record is not None and record.grant is not None
        grant = record.grant
        params = record.approved_params if record.approved_params is not None else record.request.params
        ttl: timedelta = grant.expires_at - grant.issued_at
        return svc.grant_issuer.issue(record, grant.id, params, grant.issued_at, ttl).token
    finally:
        store.close()


def test_an_allowed_action_comes_back_consumed_by_its_caller(server: LiveServer) -> None:
    answer = submit(server, "deploy.run", params={"version": "1.2"}, execute=True)
    assert answer["status"] == "executing" and "grant" not in answer
    # the execution is what POST /v1/grants/consume answers, brokered secret included
    assert answer["execution"] == {
        "request_id": answer["id"],
        "status": "executing",
        "action": "deploy.run",
        "resource": "svc://x",
        "params": {"version": "1.2"},
        "edited": False,
        "secrets": {"DEPLOY_TOKEN": "s3cr3t-deploy-value"},
    }
    reported = post(server, f"/v1/actions/{answer['id']}/result", {"status": "succeeded"})
    assert reported.status_code == 200 and reported.json()["status"] == "succeeded"
    assert "s3cr3t" not in server.log()


def test_the_ledger_tells_the_same_story_as_the_three_trip_path(server: LiveServer) -> None:
    three = submit(server, "logs.read", params={"n": 1})
    assert three["status"] == "allowed"
    consumed = post(server, "/v1/grants/consume", {"grant": three["grant"]})
    assert consumed.status_code == 200
    one = submit(server, "logs.read", params={"n": 2}, execute=True)
    assert one["execution"]["params"] == {"n": 2}
    for request_id in (three["id"], one["id"]):
        assert post(server, f"/v1/actions/{request_id}/result", {"status": "succeeded"}).status_code == 200
    expected = ["request.submitted", "request.allowed", "grant.issued", "grant.consumed", "request.succeeded"]
    assert history(server, three["id"]) == expected
    assert history(server, one["id"]) == expected
    verified = subprocess.run(
        [keyturn_executable(), "ledger", "verify", "--database", server.database_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout + verified.stderr


def test_the_consumed_grant_cannot_be_consumed_again(server: LiveServer) -> None:
    answer = submit(server, "logs.read", params={"n": 3}, execute=True)
    token = mint_grant(server, answer["id"])
    again = post(server, "/v1/grants/consume", {"grant": token})
    assert again.status_code == 409 and again.json()["error"]["detail"]["code"] == "grant_already_consumed"


def test_a_replayed_submit_does_not_hand_out_a_second_execution(server: LiveServer) -> None:
    first = submit(server, "logs.read", params={"n": 4}, execute=True, idempotency_key="once")
    replay = submit(server, "logs.read", params={"n": 4}, execute=True, idempotency_key="once")
    assert first["execution"] and replay["id"] == first["id"]
    assert replay["status"] == "executing" and "execution" not in replay and "grant" not in replay
    assert history(server, first["id"]).count("grant.consumed") == 1


@pytest.mark.parametrize(
    ("action", "status"),
    [("db.export", "pending"), ("db.drop", "denied")],
)
def test_execute_changes_nothing_for_pending_and_denied(server: LiveServer, action: str, status: str) -> None:
    answer = submit(server, action, params={"rows": 1}, execute=True)
    assert answer["status"] == status and "execution" not in answer and "grant" not in answer
    assert "grant.consumed" not in history(server, answer["id"])


def test_a_grant_bound_to_other_executors_is_not_consumed_by_the_requester(server: LiveServer) -> None:
    answer = submit(server, "release.cut", execute=True)
    assert answer["status"] == "allowed" and "execution" not in answer
    token = mint_grant(server, answer["id"])
    assert post(server, "/v1/grants/consume", {"grant": token}, who=OTHER_AGENT).status_code == 200


def test_a_secret_without_value_leaves_the_grant_unconsumed(server: LiveServer) -> None:
    answer = submit(server, "db.migrate", execute=True)
    # as on the consume path: nothing is stranded in `executing`, the caller gets a grant it can retry
    assert answer["status"] == "allowed" and "execution" not in answer and answer["grant"]
    assert "grant.consumed" not in history(server, answer["id"])


def test_execute_is_refused_where_it_means_nothing(server: LiveServer) -> None:
    dry_run = post(server, "/v1/evaluate", {"action": "logs.read", "execute": True})
    assert dry_run.status_code == 422 and "execute" in dry_run.text
