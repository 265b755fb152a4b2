"""JWTs of trusted issuers, against a real identity provider on 127.0.0.1 (discovery + JWKS over HTTP).

The provider is a small `http.server` speaking the real wire protocol (OpenID discovery document, JWK set);
tokens are signed with `cryptography` keys through PyJWT, exactly as an IdP would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from keyturn.config import IssuerSettings, Settings
from keyturn.identity import AuthenticationError, Authenticator, build_authenticator
from keyturn.identity.oidc import IssuerVerifier, JwksCache
from keyturn.identity.users import UsersFile
from keyturn.model import PrincipalKind, Role
from keyturn.store import Store
from support.oidc import (
    AUDIENCE,
    EC_KEY,
    RSA_KEY,
    RSA_KEY_2,
    IdentityProvider,
    SigningKeyPair,
    running_provider,
)


@pytest.fixture(scope="module")
def provider() -> Iterator[IdentityProvider]:
    """One provider for the module (starting and stopping one per test costs half a second each)."""
    with running_provider() as state:
        yield state


@pytest.fixture
def idp(provider: IdentityProvider) -> IdentityProvider:
    provider.reset()
    return provider


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def authenticator(
    idp: IdentityProvider,
    http: httpx.Client,
    clock: FakeClock | None = None,
    users: UsersFile | None = None,
    **settings: Any,
) -> tuple[Authenticator, JwksCache]:
    issuer = IssuerSettings(issuer=idp.url, audience=AUDIENCE, **settings)
    cache = JwksCache(issuer, http, min_refresh_interval=30.0, clock=clock or FakeClock())
    roles_for = (lambda pid: u.principal() if (u := users.user(pid)) else None) if users else None
    return Authenticator(issuers=[IssuerVerifier(issuer, cache, roles_for=roles_for)]), cache


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_build_authenticator_discovers_the_provider(idp: IdentityProvider, tmp_path: Path) -> None:
    settings = Settings(
        database="sqlite://", data_dir=tmp_path, issuers=[{"issuer": idp.url, "audience": AUDIENCE}]
    )
    store = Store.open(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        store.upgrade()
        auth = build_authenticator(settings, store)
        principal = auth.authenticate(bearer(idp.token(idp.keys[0])), None)
    finally:
        store.close()
    assert principal.id == "user:alice@example.com" and principal.kind is PrincipalKind.HUMAN
    assert principal.groups == {"sre", "oncall"} and principal.display_name == "Alice Example"
    assert not principal.roles
    assert idp.hits == {"/.well-known/openid-configuration": 1, "/keys": 1}


def test_rs256_and_es256_tokens_with_a_configured_jwks_url(idp: IdentityProvider, http: httpx.Client) -> None:
    auth, cache = authenticator(idp, http, jwks_url=f"{idp.url}/keys", groups_claim="teams")
    for key in idp.keys:
        who = auth.authenticate(bearer(idp.token(key, teams="sre security")), None)
        assert who.groups == {"sre", "security"}  # groups from the configured claim, space separated
    assert cache.fetches == 1 and "/.well-known/openid-configuration" not in idp.hits


def test_nested_groups_claim(idp: IdentityProvider, http: httpx.Client) -> None:
    auth, _ = authenticator(idp, http, groups_claim="realm_access.roles")
    token = idp.token(idp.keys[0], realm_access={"roles": ["data-owners"]})
    assert auth.authenticate(bearer(token), None).groups == {"data-owners"}


def test_agent_issuer_gives_agents(idp: IdentityProvider, http: httpx.Client) -> None:
    auth, _ = authenticator(idp, http, kind="agent", subject_claim="sub", groups_claim="groups")
    who = auth.authenticate(bearer(idp.token(idp.keys[1], sub="ci-runner-7")), None)
    assert who.id == "agent:ci-runner-7" and who.kind is PrincipalKind.AGENT and not who.roles


def test_roles_come_from_the_users_file_not_the_token(
    idp: IdentityProvider, http: httpx.Client, tmp_path: Path
) -> None:
    path = tmp_path / "users.yaml"
    path.write_text("users:\n  - {id: user:alice@example.com, groups: [security], roles: [auditor]}\n")
    auth, _ = authenticator(idp, http, users=UsersFile(path))
    who = auth.authenticate(bearer(idp.token(idp.keys[0], roles=["admin"])), None)
    assert who.roles == {Role.AUDITOR} and who.groups == {"sre", "oncall", "security"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"exp": int(time.time()) - 600}, "expired"),
        ({"aud": "some-other-app"}, "audience"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"exp": None}, "invalid bearer token"),
        ({"email": None}, "no 'email' claim"),
        ({"email_verified": False}, "not verified"),
        ({"email_verified": None}, "not verified"),  # absent: an unverified address is no identity
        ({"email_verified": "true"}, "not verified"),  # only the JSON boolean counts
    ],
)
def test_bad_claims_are_refused(
    idp: IdentityProvider, http: httpx.Client, overrides: dict[str, Any], message: str
) -> None:
    auth, _ = authenticator(idp, http)
    with pytest.raises(AuthenticationError, match=message):
        auth.authenticate(bearer(idp.token(idp.keys[0], **overrides)), None)


def test_wrong_issuer_is_refused(idp: IdentityProvider, http: httpx.Client) -> None:
    auth, _ = authenticator(idp, http)
    with pytest.raises(AuthenticationError, match="issuer is not trusted"):
        auth.authenticate(bearer(idp.token(idp.keys[0], iss="https://evil.example")), None)
    assert idp.hits == {}  # an untrusted issuer costs no request to anyone


def test_a_key_the_provider_does_not_publish_is_refused(idp: IdentityProvider, http: httpx.Client) -> None:
    auth, _ = authenticator(idp, http)
    stolen_kid = SigningKeyPair("rsa-1", "RS256", RSA_KEY_2)  # right kid, wrong key
    with pytest.raises(AuthenticationError, match=r"^invalid bearer token$"):
        auth.authenticate(bearer(idp.token(stolen_kid)), None)


def test_unknown_kid_refreshes_at_most_once_per_interval(idp: IdentityProvider, http: httpx.Client) -> None:
    clock = FakeClock()
    auth, cache = authenticator(idp, http, clock)
    auth.authenticate(bearer(idp.token(idp.keys[0])), None)
    assert cache.fetches == 1
    for n in range(5):  # a flood of random kids: one refresh, not five
        clock.now += 1
        with pytest.raises(AuthenticationError, match="key the issuer does not publish"):
            auth.authenticate(bearer(idp.token(SigningKeyPair(f"random-{n}", "RS256", RSA_KEY_2))), None)
    assert cache.fetches == 1 and idp.hits["/keys"] == 1
    clock.now += 31
    with pytest.raises(AuthenticationError):
        auth.authenticate(bearer(idp.token(SigningKeyPair("random-x", "RS256", RSA_KEY_2))), None)
    assert idp.hits["/keys"] == 2


def test_key_rotation_at_the_provider_is_picked_up(idp: IdentityProvider, http: httpx.Client) -> None:
    clock = FakeClock()
    auth, _ = authenticator(idp, http, clock)
    old = idp.keys[0]
    assert auth.authenticate(bearer(idp.token(old)), None).id == "user:alice@example.com"
    clock.now += 60
    new = SigningKeyPair("rsa-2", "RS256", RSA_KEY_2)
    idp.keys = [new]  # the provider rotates and drops the old key
    assert auth.authenticate(bearer(idp.token(new)), None).id == "user:alice@example.com"
    with pytest.raises(AuthenticationError):  # the retired key no longer verifies
        auth.authenticate(bearer(idp.token(old)), None)


def test_provider_outage_refuses_then_recovers(idp: IdentityProvider, http: httpx.Client) -> None:
    clock = FakeClock()
    auth, _ = authenticator(idp, http, clock)
    idp.down = True
    token = idp.token(idp.keys[0])
    with pytest.raises(AuthenticationError, match="key the issuer does not publish"):
        auth.authenticate(bearer(token), None)
    idp.down = False
    clock.now += 31
    assert auth.authenticate(bearer(token), None).id == "user:alice@example.com"


def test_discovery_naming_another_issuer_is_refused(idp: IdentityProvider, http: httpx.Client) -> None:
    idp.discovery_issuer = "https://evil.example"
    auth, _ = authenticator(idp, http)
    with pytest.raises(AuthenticationError):
        auth.authenticate(bearer(idp.token(idp.keys[0])), None)
    assert "/keys" not in idp.hits


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def test_alg_none_is_refused(idp: IdentityProvider, http: httpx.Client) -> None:
    auth, _ = authenticator(idp, http)
    claims = jwt.decode(idp.token(idp.keys[0]), options={"verify_signature": False})
    with pytest.raises(AuthenticationError, match="'none' is not accepted"):
        auth.authenticate(bearer(_unsigned({"alg": "none", "kid": "rsa-1"}, claims) + "."), None)


def test_hs256_signed_with_the_public_key_is_refused(idp: IdentityProvider, http: httpx.Client) -> None:
    auth, _ = authenticator(idp, http)
    claims = jwt.decode(idp.token(idp.keys[0]), options={"verify_signature": False})
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, json.dumps(idp.keys[0].jwk()).encode()):
        signing_input = _unsigned({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, claims)
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        with pytest.raises(AuthenticationError, match="'HS256' is not accepted"):
            auth.authenticate(bearer(f"{signing_input}.{_b64(mac)}"), None)


def test_alg_that_does_not_fit_the_key_is_refused(idp: IdentityProvider, http: httpx.Client) -> None:
    """ES256 claimed for the RSA key's kid: refused before any signature check."""
    auth, _ = authenticator(idp, http)
    forged = SigningKeyPair("rsa-1", "ES256", EC_KEY)
    with pytest.raises(AuthenticationError, match="does not match the issuer's key"):
        auth.authenticate(bearer(idp.token(forged)), None)


def test_jwt_only_as_bearer_and_malformed_jwts(idp: IdentityProvider, http: httpx.Client) -> None:
    auth, _ = authenticator(idp, http)
    with pytest.raises(AuthenticationError, match="not as X-API-Key"):
        auth.authenticate(None, idp.token(idp.keys[0]))
    for junk in ("a.b.c", "e30.e30.", "!!.??.**"):
        with pytest.raises(AuthenticationError):
            auth.authenticate(bearer(junk), None)


def test_email_subjects_are_one_principal_however_they_are_spelled(
    idp: IdentityProvider, http: httpx.Client
) -> None:
    auth, _ = authenticator(idp, http)
    who = auth.authenticate(bearer(idp.token(idp.keys[0], email="Alice@Example.COM")), None)
    assert who.id == "user:alice@example.com"
