"""The admin API (`/v1/admin/…`) and `keyturn admin` through a real server: only the admin role gets in,
and every admin action is in the ledger with the admin as actor (and no secret in it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.live import LiveServer, keyturn_executable, start_server

ADMIN = "user:frank@example.com"
AUDITOR = "user:erin@example.com"
APPROVER = "user:alice@example.com"
AGENT = "agent:deploy-bot"

ROUTES = [
    ("GET", "/v1/admin/api-keys", None),
    ("POST", "/v1/admin/api-keys", {"agent": "evil-bot"}),
    ("POST", "/v1/admin/api-keys/kt_abcdefgh/revoke", None),
    ("GET", "/v1/admin/user-tokens", None),
    ("POST", "/v1/admin/user-tokens/ktu_abcdefgh/revoke", None),
    ("GET", "/v1/admin/signing-keys", None),
    ("POST", "/v1/admin/signing-keys/rotate", {"purpose": "grant"}),
    ("POST", "/v1/admin/signing-keys/somekid/retire", None),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    started = start_server(tmp_path_factory.mktemp("admin"))
    yield started
    started.stop()


def call(server: LiveServer, who: str | None, method: str, path: str, body: Any = None) -> httpx.Response:
    headers = server.headers(who) if who else {}
    return httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=30)


def ledger_events(server: LiveServer) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = -1
    while True:
        page = call(server, AUDITOR, "GET", f"/v1/ledger/events?limit=1000&after_seq={after}").json()
        items += page["items"]
        if page["next_after_seq"] is None:
            return items
        after = page["next_after_seq"]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_everyone_but_an_admin_is_refused_and_nothing_is_ledgered(
    server: LiveServer, method: str, path: str, body: Any
) -> None:
    before = len(ledger_events(server))
    assert call(server, None, method, path, body).status_code == 401
    for who in (AUDITOR, APPROVER, AGENT):
        answer = call(server, who, method, path, body)
        assert answer.status_code == 403, (who, answer.text)
        assert "admin role" in answer.json()["error"]["message"]
    assert len(ledger_events(server)) == before


def test_api_keys_created_and_revoked_by_an_admin_are_ledgered(server: LiveServer) -> None:
    created = call(server, ADMIN, "POST", "/v1/admin/api-keys", {"agent": "report-bot", "groups": ["bots"]})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["api_key"], created.json()["key_id"]
    assert key.startswith(key_id + "_")
    works = httpx.post(f"{server.url}/v1/evaluate", json={"action": "x.read"}, headers={"X-API-Key": key})
    assert works.status_code == 200
    listed = call(server, ADMIN, "GET", "/v1/admin/api-keys").json()["items"]
    assert any(k["key_id"] == key_id and k["principal"] == "agent:report-bot" for k in listed)
    assert all("api_key" not in k and "secret_hash" not in k for k in listed)

    revoked = call(server, ADMIN, "POST", f"/v1/admin/api-keys/{key_id}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    refused = httpx.post(f"{server.url}/v1/evaluate", json={"action": "x.read"}, headers={"X-API-Key": key})
    assert refused.status_code == 401
    again = call(server, ADMIN, "POST", f"/v1/admin/api-keys/{key_id}/revoke")
    assert again.status_code == 400 and "already revoked" in again.json()["error"]["message"]
    assert call(server, ADMIN, "POST", "/v1/admin/api-keys/kt_nosuchkey/revoke").status_code == 404

    events = [e for e in ledger_events(server) if e["payload"].get("key_id") == key_id]
    assert [(e["type"], e["actor"]) for e in events] == [
        ("admin.api_key.created", ADMIN),
        ("admin.api_key.revoked", ADMIN),
    ]
    assert all(key.split("_", 2)[2] not in str(e) for e in events)  # the secret is never ledgered


def test_bad_admin_input_is_a_4xx_naming_the_field(server: LiveServer) -> None:
    bad_agent = call(server, ADMIN, "POST", "/v1/admin/api-keys", {"agent": "bad name!"})
    assert bad_agent.status_code == 400 and "agent" in bad_agent.json()["error"]["message"]
    unknown = call(server, ADMIN, "POST", "/v1/admin/api-keys", {"agent": "a", "extra": 1})
    assert unknown.status_code == 422
    bad_purpose = call(server, ADMIN, "POST", "/v1/admin/signing-keys/rotate", {"purpose": "../x"})
    assert bad_purpose.status_code == 400 and "purpose" in bad_purpose.json()["error"]["message"]
    assert call(server, ADMIN, "POST", "/v1/admin/api-keys/%00/revoke").status_code == 422


def test_a_revoked_user_token_is_refused_from_the_next_request(server: LiveServer) -> None:
    victim = "user:olivia@example.com"
    assert call(server, victim, "GET", "/v1/actions").status_code == 200
    tokens = call(server, ADMIN, "GET", "/v1/admin/user-tokens").json()["items"]
    token_id = next(t["token_id"] for t in tokens if t["user"] == victim)
    revoked = call(server, ADMIN, "POST", f"/v1/admin/user-tokens/{token_id}/revoke")
    assert revoked.status_code == 200 and revoked.json()["user"] == victim
    assert call(server, victim, "GET", "/v1/actions").status_code == 401
    assert call(server, ADMIN, "POST", f"/v1/admin/user-tokens/{token_id}/revoke").status_code == 404
    events = [e for e in ledger_events(server) if e["type"] == "admin.user_token.revoked"]
    assert [(e["actor"], e["payload"]["token_id"], e["payload"]["user"]) for e in events] == [
        (ADMIN, token_id, victim)
    ]


def test_signing_keys_rotated_and_retired_by_an_admin(server: LiveServer) -> None:
    with server.client(AGENT) as agent:
        old_grant = agent.submit("test.allow", "svc://x", {"n": 1})["grant"]
    before = {k["kid"] for k in httpx.get(f"{server.url}/v1/keys").json()["keys"]}
    rotated = call(server, ADMIN, "POST", "/v1/admin/signing-keys/rotate", {"purpose": "grant"}).json()
    after = httpx.get(f"{server.url}/v1/keys").json()["keys"]
    assert {k["kid"] for k in after} == before | {rotated["kid"]}
    old_kid = next(
        k["kid"]
        for k in call(server, ADMIN, "GET", "/v1/admin/signing-keys").json()["items"]
        if k["purpose"] == "grant" and k["state"] == "verifying"
    )
    current = call(server, ADMIN, "POST", f"/v1/admin/signing-keys/{rotated['kid']}/retire")
    assert current.status_code == 400 and "rotate" in current.json()["error"]["message"]
    assert call(server, ADMIN, "POST", f"/v1/admin/signing-keys/{old_kid}/retire").status_code == 200
    consumed = call(server, AGENT, "POST", "/v1/grants/consume", {"grant": old_grant})
    assert consumed.status_code == 403 and "unknown key" in consumed.json()["error"]["message"]
    ledger_rotation = call(server, ADMIN, "POST", "/v1/admin/signing-keys/rotate", {"purpose": "ledger"})
    assert ledger_rotation.status_code == 200
    kinds = [
        (e["type"], e["actor"], e["payload"]["kid"])
        for e in ledger_events(server)
        if "signing_key" in e["type"]
    ]
    assert kinds == [
        ("admin.signing_key.rotated", ADMIN, rotated["kid"]),
        ("admin.signing_key.retired", ADMIN, old_kid),
        ("admin.signing_key.rotated", ADMIN, ledger_rotation.json()["kid"]),
    ]


def test_the_ledger_with_admin_events_still_verifies(server: LiveServer, tmp_path: Path) -> None:
    call(server, ADMIN, "POST", "/v1/admin/api-keys", {"agent": "verify-bot"})
    verified = subprocess.run(
        [keyturn_executable(), "ledger", "verify", "--database", server.database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout + verified.stderr


def test_the_admin_cli_goes_through_the_api(server: LiveServer) -> None:
    def admin(*args: str, who: str = ADMIN) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KEYTURN_URL": server.url, "KEYTURN_TOKEN": server.tokens[who]}
        return subprocess.run(
            [keyturn_executable(), "admin", *args], capture_output=True, text=True, timeout=60, env=env
        )

    created = admin("api-keys", "create", "--agent", "cli-bot", "--groups", "bots")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("kt_") and "cli-bot" in created.stderr
    listed = admin("api-keys", "list")
    assert listed.returncode == 0 and "agent:cli-bot" in listed.stdout and key not in listed.stdout
    revoked = admin("api-keys", "revoke", key)  # a pasted whole key: only its id is sent and shown
    assert revoked.returncode == 0 and key.split("_", 2)[2] not in revoked.stdout + revoked.stderr
    keys = admin("signing-keys", "list")
    assert keys.returncode == 0 and "grant" in keys.stdout and "current" in keys.stdout
    refused = admin("api-keys", "list", who=AUDITOR)
    assert refused.returncode == 1 and "admin role" in refused.stderr
