"""Identity through a real `keyturn serve`: headers are the only source of the caller, tokens and keys can
be added and revoked while it runs, and failures are clean 401/403 JSON answers."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import httpx
import yaml

from keyturn.store.api_keys import AUTH_CACHE_SECONDS
from support.live import keyturn_executable


def keyturn(*args: str) -> subprocess.CompletedProcess[str]:
    command = [keyturn_executable(), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_identity_end_to_end(live_server: Any) -> None:
    url = live_server.url
    agent_key = live_server.tokens["agent:deploy-bot"]
    with httpx.Client(base_url=url, timeout=30.0) as http:
        # No credentials, bad credentials: 401 with a JSON error and a Bearer challenge.
        missing = http.get("/v1/actions")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "unauthenticated"
        wrong = http.get("/v1/actions", headers={"X-API-Key": agent_key[:-4] + "AAAA"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid or revoked API key"

        # The requester comes from the credential; a body cannot name one.
        body = {"action": "db.export", "resource": "postgres://prod/customers", "params": {"rows": 10}}
        smuggled = http.post(
            "/v1/actions",
            json={**body, "requester": {"id": "user:alice@example.com", "kind": "human"}},
            headers={"X-API-Key": agent_key},
        )
        assert smuggled.status_code == 422
        assert smuggled.json()["error"]["detail"]["fields"][0]["field"] == "body.requester"
        created = http.post(
            "/v1/actions",
            json={**body, "context": {"requester": "user:alice@example.com"}},
            headers={"X-API-Key": agent_key},
        )
        assert created.status_code == 201, created.text
        assert created.json()["requester"] == {"id": "agent:deploy-bot", "kind": "agent"}
        request_id = created.json()["id"]

        # An agent never reviews: its key authenticates, the review endpoint refuses it.
        as_agent = {"X-API-Key": agent_key}
        approve = {"decision": "approve"}
        review = http.post(f"/v1/actions/{request_id}/reviews", json=approve, headers=as_agent)
        assert review.status_code == 403 and review.json()["error"]["code"] == "forbidden"

        # A personal token added with the CLI works against the running server at once…
        users_file = live_server.workdir / "users.yaml"
        added = keyturn("users", "add-token", "--users-file", str(users_file), "user:bob@example.com")
        assert added.returncode == 0, added.stderr
        bob = {"Authorization": f"Bearer {added.stdout.strip()}"}
        seen = http.get(f"/v1/actions/{request_id}", headers=bob)
        assert seen.status_code == 200, seen.text  # bob is in sre, the route's group
        # …and stops working once removed from the file.
        document = yaml.safe_load(users_file.read_text(encoding="utf-8"))
        for user in document["users"]:
            if user["id"] == "user:bob@example.com":
                user["tokens"] = [t for t in user["tokens"] if not added.stdout.startswith(t["id"] + "_")]
        users_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        assert http.get(f"/v1/actions/{request_id}", headers=bob).status_code == 401

        # Revoking an agent key with the CLI (another process) takes effect within the server's key cache
        # bound (AUTH_CACHE_SECONDS; the admin API, in the server's own process, at once).
        key_id = agent_key[: len("kt_") + 8]  # kt_<8 chars>, the start of the key
        revoked = keyturn("api-keys", "revoke", key_id, "--config", str(live_server.config_path))
        assert revoked.returncode == 0, revoked.stderr
        time.sleep(AUTH_CACHE_SECONDS)
        assert http.get("/v1/actions", headers={"X-API-Key": agent_key}).status_code == 401

        # The public keys: grant and ledger keys, never a private part.
        jwks = http.get("/v1/keys").json()["keys"]
        assert {k["keyturn_purpose"] for k in jwks} >= {"grant", "ledger"}
        assert all("d" not in k and k["alg"] == "EdDSA" for k in jwks)
