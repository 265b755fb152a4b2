"""One human counts once, whatever credential they use (issue #13 §2): every credential pair gives one
canonical principal id, and a real server with a real identity provider counts alice once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyturn.config import IssuerSettings
from keyturn.identity import AuthenticationError, Authenticator, UsersFileError
from keyturn.identity.api_keys import authenticate_api_key, generate_api_key
from keyturn.identity.oidc import IssuerVerifier, JwksCache
from keyturn.identity.users import UsersFile, add_user_token
from keyturn.model import PrincipalKind, Role
from keyturn.store import SqlApiKeyRepository, Store
from support.live import DEFAULT_USERS
from support.oidc import AUDIENCE, IdentityProvider, running_provider


@pytest.fixture(scope="module")
def provider() -> Iterator[IdentityProvider]:
    with running_provider() as state:
        yield state


@pytest.fixture
def idp(provider: IdentityProvider) -> IdentityProvider:
    provider.reset()
    return provider


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def issuer(idp: IdentityProvider, http: httpx.Client, users: UsersFile | None = None, **settings: Any) -> Any:
    config = IssuerSettings(issuer=idp.url, audience=AUDIENCE, **settings)
    roles_for = (lambda pid: u.principal() if (u := users.user(pid)) else None) if users else None
    return IssuerVerifier(config, JwksCache(config, http), roles_for=roles_for)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_users_file_and_oidc_give_one_principal(
    idp: IdentityProvider, http: httpx.Client, tmp_path: Path
) -> None:
    path = tmp_path / "users.yaml"
    path.write_text("users:\n  - {id: user:Alice@Example.com, groups: [sre], roles: [auditor]}\n")
    users = UsersFile(path)
    token = add_user_token(path, "user:ALICE@example.com", "laptop")  # any spelling finds her
    auth = Authenticator(users=users, issuers=[issuer(idp, http, users)])
    from_file = auth.authenticate(bearer(token), None)
    from_oidc = auth.authenticate(bearer(idp.token(email="alice@example.com")), None)
    assert from_file.id == from_oidc.id == "user:alice@example.com"
    assert from_oidc.roles == {Role.AUDITOR}  # the file's entry is found under the canonical id


def test_the_users_file_refuses_two_spellings_of_one_human_and_ambiguous_ids(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text("users:\n  - {id: user:alice@example.com}\n  - {id: USER:Alice@Example.COM}\n")
    with pytest.raises(UsersFileError, match="listed twice"):
        UsersFile(path)
    path.write_text('users:\n  - id: "user:alice\\u200b@example.com"\n    groups: [sre]\n')
    with pytest.raises(UsersFileError, match=r"users.yaml:2:\d+: users.0.id: .*U\+200B"):
        UsersFile(path)


def test_oidc_and_oidc_with_different_case(idp: IdentityProvider, http: httpx.Client) -> None:
    by_email = Authenticator(issuers=[issuer(idp, http)])
    one = by_email.authenticate(bearer(idp.token(email="Alice@Example.COM")), None)
    two = by_email.authenticate(bearer(idp.token(email="alice@example.com")), None)
    assert one.id == two.id == "user:alice@example.com"
    by_sub = Authenticator(issuers=[issuer(idp, http, subject_claim="sub")])
    assert by_sub.authenticate(bearer(idp.token(sub="Bob.Smith")), None).id == "user:bob.smith"
    assert by_sub.authenticate(bearer(idp.token(sub="BOB.SMITH")), None).id == "user:bob.smith"
    # a subject that only looks like alice is no identity at all
    with pytest.raises(AuthenticationError, match="U\\+200B"):
        by_email.authenticate(bearer(idp.token(email="alice\u200b@example.com")), None)


def test_api_key_and_workload_jwt_give_one_agent(
    idp: IdentityProvider, http: httpx.Client, tmp_path: Path
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        store.upgrade()
        repository = SqlApiKeyRepository(store)
        plaintext, record = generate_api_key("agent:Deploy-Bot", ["bots"], datetime.now(UTC))
        assert record.principal_id == "agent:deploy-bot"
        repository.add(record)
        from_key = authenticate_api_key(repository, plaintext)
        with pytest.raises(ValueError, match="invisible"):
            generate_api_key("agent:deploy\u200d-bot", [], datetime.now(UTC))
    finally:
        store.close()
    workload = Authenticator(issuers=[issuer(idp, http, kind="agent", subject_claim="sub")])
    from_jwt = workload.authenticate(bearer(idp.token(sub="Deploy-Bot")), None)
    assert from_key.id == from_jwt.id == "agent:deploy-bot"
    assert from_key.kind is from_jwt.kind is PrincipalKind.AGENT


# --- through a real server ----------------------------------------------------------------------------


def test_quorum_attack_users_file_plus_oidc_through_a_real_server(
    idp: IdentityProvider, live_servers: Any, database_url: str
) -> None:
    """Issue #13: alice from the users file (`user:Alice@Example.com`) and alice through OIDC
    (`alice@example.com`) approved twice and met "2 from sre". One human counts once."""
    users = {k: v for k, v in DEFAULT_USERS.items() if k != "user:alice@example.com"}
    users["user:Alice@Example.com"] = {"groups": ["sre"]}
    server = live_servers(
        database_url=database_url,
        users=users,
        settings={"issuers": [{"issuer": idp.url, "audience": AUDIENCE}]},
    )
    agent = server.headers("agent:deploy-bot")
    alice_file = server.headers("user:Alice@Example.com")
    alice_oidc = {"Authorization": bearer(idp.token(email="alice@example.com", groups=["sre"]))}
    carol = server.headers("user:carol@example.com")
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        # k8s.delete is the critical tier: 2 from sre and 1 from security
        created = client.post(
            "/v1/actions", json={"action": "k8s.delete", "resource": "ns/prod"}, headers=agent
        )
        assert created.status_code == 201, created.text
        request_id = created.json()["id"]
        first = client.post(
            f"/v1/actions/{request_id}/reviews", json={"decision": "approve"}, headers=alice_file
        )
        assert first.status_code == 200, first.text
        second = client.post(
            f"/v1/actions/{request_id}/reviews", json={"decision": "approve"}, headers=alice_oidc
        )
        assert second.status_code == 403, second.text
        assert second.json()["error"]["code"] == "already_reviewed"
        third = client.post(f"/v1/actions/{request_id}/reviews", json={"decision": "approve"}, headers=carol)
        assert third.status_code == 200, third.text
        state = client.get(f"/v1/actions/{request_id}", headers=carol).json()
        assert state["status"] == "pending"
        reviewers = [e["payload"]["reviewer"] for e in state["history"] if e["type"] == "request.reviewed"]
        assert reviewers == ["user:alice@example.com", "user:carol@example.com"]
        # OIDC alice sees the request as already reviewed by her: it is not in her queue
        queue = client.get("/v1/actions", params={"reviewable": "true"}, headers=alice_oidc).json()
        assert request_id not in {item["id"] for item in queue["items"]}


def test_on_behalf_of_in_odd_case_through_a_real_server(live_server: Any) -> None:
    agent = live_server.headers("agent:deploy-bot")
    olivia = live_server.headers("user:olivia@example.com")
    with httpx.Client(base_url=live_server.url, timeout=30.0) as client:
        body = {
            "action": "db.export",
            "resource": "postgres://prod/x",
            "on_behalf_of": "User:OLIVIA@Example.com",
        }
        created = client.post("/v1/actions", json=body, headers=agent)
        assert created.status_code == 201, created.text
        assert created.json()["on_behalf_of"] == "user:olivia@example.com"
        refused = client.post(
            f"/v1/actions/{created.json()['id']}/reviews", json={"decision": "approve"}, headers=olivia
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "on_behalf_of_cannot_approve"
        for ambiguous in (
            "user:olivia\u200b@example.com",
            "user:olivia@example.com.",
            "user:a@b@example.com",
        ):
            bad = client.post("/v1/actions", json={**body, "on_behalf_of": ambiguous}, headers=agent)
            assert bad.status_code == 422, bad.text
            assert bad.json()["error"]["detail"]["fields"][0]["field"] == "body.on_behalf_of"
