"""Grants: Ed25519 JWTs bound to one request, verified against the caller's clock; every refusal case."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import RequestFactory
from keyturn import workflow
from keyturn.grants import GRANT_TYP, GrantError, GrantIssuer, IssuedGrant, verify_grant
from keyturn.model import ActionRequest, RequestRecord, params_digest
from keyturn.signing_keys import DirectoryKeyRing as KeyRing
from keyturn.signing_keys import SigningKey

AUD = "keyturn-executor"
ISS = "http://127.0.0.1:8300"
T0 = datetime(2030, 1, 7, 9, 0, 30, 250_000, tzinfo=UTC)
TTL = timedelta(minutes=5)


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing(tmp_path / "keys")


@pytest.fixture
def record(factory: RequestFactory) -> RequestRecord:
    return factory.submit(factory.allow_verdict(), params={"rows": 500, "tags": ["pii"]}).record


def issue(ring: KeyRing, record: RequestRecord, **kwargs: Any) -> IssuedGrant:
    issuer = GrantIssuer(ring.signing_key("grant"), issuer=ISS, audience=kwargs.pop("audience", AUD))
    return issuer.issue(
        record, "gr_test", record.request.params, kwargs.pop("at", T0), kwargs.pop("ttl", TTL)
    )


def verify(ring: KeyRing, token: str, *, now: datetime = T0, audience: str = AUD) -> Any:
    return verify_grant(token, ring.public_key_map("grant"), now=now, audience=audience)


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    decode = lambda s: json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))  # noqa: E731
    return decode(header), decode(payload), signature


def b64(document: dict[str, Any]) -> str:
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_round_trip_binds_request_action_resource_and_params(ring: KeyRing, record: RequestRecord) -> None:
    issued = issue(ring, record)
    claims = verify(ring, issued.token, now=T0 + timedelta(minutes=4))
    assert claims == issued.claims
    assert (claims.jti, claims.rid, claims.act, claims.res, claims.sub) == (
        "gr_test",
        record.id,
        "db.export",
        "postgres://prod/customers",
        "agent:deploy-bot",
    )
    assert claims.pdg == params_digest({"tags": ["pii"], "rows": 500})  # canonical: key order is irrelevant
    assert (claims.aud, claims.iss) == (AUD, ISS)
    header, payload, _ = segments(issued.token)
    assert header == {"alg": "EdDSA", "kid": ring.signing_key("grant").kid, "typ": GRANT_TYP}
    assert payload["nbf"] == payload["iat"] == int(T0.timestamp())
    assert payload["exp"] == int((T0 + TTL).timestamp())  # rounded down: never outlives the stored grant


def test_issuing_is_deterministic(ring: KeyRing, record: RequestRecord) -> None:
    assert issue(ring, record).token == issue(ring, record).token
    assert issue(ring, record).token != issue(ring, record, ttl=timedelta(minutes=6)).token


def test_expired_at_now_and_not_yet_valid(ring: KeyRing, record: RequestRecord) -> None:
    token = issue(ring, record).token
    exp = datetime.fromtimestamp(segments(token)[1]["exp"], UTC)
    verify(ring, token, now=exp - timedelta(microseconds=1))
    with pytest.raises(GrantError, match="expired"):
        verify(ring, token, now=exp)
    with pytest.raises(GrantError, match="not valid yet"):
        verify(ring, token, now=T0 - timedelta(seconds=5))


def test_wrong_audience(ring: KeyRing, record: RequestRecord) -> None:
    token = issue(ring, record, audience="someone-else").token
    with pytest.raises(GrantError, match="audience"):
        verify(ring, token)


def test_tampered_payload_fails_the_signature(ring: KeyRing, record: RequestRecord) -> None:
    token = issue(ring, record).token
    header, _payload, signature = token.split(".")
    claims = segments(token)[1]
    claims["pdg"] = params_digest({"rows": 5_000_000, "tags": ["pii"]})
    with pytest.raises(GrantError, match="signature is invalid"):
        verify(ring, f"{header}.{b64(claims)}.{signature}")


def test_a_key_of_another_server_is_unknown(ring: KeyRing, record: RequestRecord, tmp_path: Path) -> None:
    foreign = issue(KeyRing(tmp_path / "other"), record).token
    with pytest.raises(GrantError, match="unknown key"):
        verify(ring, foreign)


def test_another_key_claiming_our_kid_fails_the_signature(ring: KeyRing, record: RequestRecord) -> None:
    real = ring.signing_key("grant")
    impostor_private = Ed25519PrivateKey.generate()
    impostor = SigningKey(
        kid=real.kid,
        purpose="grant",
        private_key=impostor_private,
        public_key=impostor_private.public_key(),
        created_at=real.created_at,
    )
    token = GrantIssuer(impostor, issuer=ISS, audience=AUD).issue(
        record, "gr_x", record.request.params, T0, TTL
    )
    with pytest.raises(GrantError, match="signature is invalid"):
        verify(ring, token.token)


def test_retired_key_still_verifies_after_rotation(ring: KeyRing, record: RequestRecord) -> None:
    token = issue(ring, record).token
    ring.rotate("grant")
    assert verify(ring, token).rid == record.id
    assert segments(issue(ring, record).token)[0]["kid"] == ring.signing_key("grant").kid


def test_alg_none_is_refused(ring: KeyRing, record: RequestRecord) -> None:
    _, claims, _ = segments(issue(ring, record).token)
    header = {"alg": "none", "kid": ring.signing_key("grant").kid, "typ": GRANT_TYP}
    with pytest.raises(GrantError, match="'none' is not accepted"):
        verify(ring, f"{b64(header)}.{b64(claims)}.")


def test_hs256_signed_with_the_public_key_is_refused(ring: KeyRing, record: RequestRecord) -> None:
    """The algorithm-confusion attack: HMAC keyed with the (public) verification key."""
    key = ring.signing_key("grant")
    _, claims, _ = segments(issue(ring, record).token)
    header = {"alg": "HS256", "kid": key.kid, "typ": GRANT_TYP}
    signing_input = f"{b64(header)}.{b64(claims)}".encode()
    for secret in (
        key.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ):
        mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
        forged = signing_input.decode() + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        with pytest.raises(GrantError, match="'HS256' is not accepted"):
            verify(ring, forged)


def test_wrong_typ_is_refused(ring: KeyRing, record: RequestRecord) -> None:
    """An EdDSA JWT from the same key but not a grant (e.g. some other token type) is not a grant."""
    key = ring.signing_key("grant")
    _, claims, _ = segments(issue(ring, record).token)
    token = jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": key.kid, "typ": "JWT"})
    with pytest.raises(GrantError, match="not a grant"):
        verify(ring, token)


@pytest.mark.parametrize(
    "claim", ["jti", "rid", "act", "res", "rdg", "pdg", "sub", "iss", "aud", "iat", "nbf", "exp"]
)
def test_missing_claim_is_refused(ring: KeyRing, record: RequestRecord, claim: str) -> None:
    key = ring.signing_key("grant")
    _, claims, _ = segments(issue(ring, record).token)
    del claims[claim]
    token = jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": key.kid, "typ": GRANT_TYP})
    with pytest.raises(GrantError, match=f"missing the '{claim}' claim"):
        verify(ring, token)


@pytest.mark.parametrize(
    ("claim", "value"), [("rid", 42), ("pdg", ["x"]), ("exp", "tomorrow"), ("aud", [AUD])]
)
def test_claims_of_the_wrong_type_are_refused(
    ring: KeyRing, record: RequestRecord, claim: str, value: Any
) -> None:
    key = ring.signing_key("grant")
    _, claims, _ = segments(issue(ring, record).token)
    claims[claim] = value
    token = jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": key.kid, "typ": GRANT_TYP})
    with pytest.raises(GrantError):
        verify(ring, token)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c", "eyJhbGciOiJFZERTQSJ9.e30", "!!.??.**", "e30.e30.e30.e30", "\x00.\x00.\x00"],
)
def test_malformed_tokens_get_a_grant_error(ring: KeyRing, token: str) -> None:
    with pytest.raises(GrantError):
        verify(ring, token)


# --- the resource: bound by its keyed digest, shown masked (issue #13: a `user:password@` in clear) -------

SECRET_RESOURCE = "postgres://admin:Sup3rS3cret@db.internal/customers"


def test_a_resource_with_credentials_is_masked_in_the_token_and_bound_by_its_keyed_digest(
    ring: KeyRing, factory: RequestFactory
) -> None:
    request = ActionRequest(
        action="db.export", resource=SECRET_RESOURCE, params={"rows": 5}, requester=factory.agent
    )
    record = workflow.submit("req_secret", request, factory.allow_verdict(), T0, "gr_test").record
    redactor = ring.redactor()
    issuer = GrantIssuer(ring.signing_key("grant"), issuer=ISS, audience=AUD, redactor=redactor)
    issued = issuer.issue(record, "gr_test", record.request.params, T0, TTL)
    _, payload, _ = segments(issued.token)
    assert "Sup3rS3cret" not in json.dumps(payload)
    assert payload["res"] == "postgres://[redacted]@db.internal/customers"
    assert payload["rdg"].startswith(f"hmac-sha256:{ring.redaction_key().kid}:")
    claims = verify(ring, issued.token)
    grant = record.grant
    assert grant is not None
    agent = factory.agent

    def present(**changes: Any) -> workflow.GrantPresentation:
        fields = {
            "grant_id": grant.id,
            "request_id": record.id,
            "action": claims.act,
            "resource": claims.res,
            "params_digest": grant.params_digest,
            "resource_digest": claims.rdg,
            **changes,
        }
        return workflow.GrantPresentation(**fields)

    issued_kid = ring.redaction_key().kid
    ring.rotate_redaction_key()  # a grant issued before a rotation still binds
    after_rotation = ring.redactor()
    consumed = workflow.consume_grant(record, present(), agent, T0, redactor=after_rotation)
    assert consumed.record.status.value == "executing"
    other = after_rotation.digest("postgres://admin:Sup3rS3cret@db.internal/other")
    refusals = [
        present(resource_digest=other),  # another resource behind the same mask
        present(resource_digest=None),  # no digest: the masked resource alone binds nothing
        present(resource=SECRET_RESOURCE, resource_digest=None),
        present(resource_digest=claims.rdg.replace(issued_kid, "x" * 16)),
    ]
    for presented in refusals:
        with pytest.raises(workflow.GrantMismatch):
            workflow.consume_grant(record, presented, agent, T0, redactor=after_rotation)
    with pytest.raises(workflow.GrantMismatch):  # a server without the key cannot be fooled either
        workflow.consume_grant(record, present(), agent, T0)
