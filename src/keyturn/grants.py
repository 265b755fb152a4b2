"""One-time grants: short-lived EdDSA (Ed25519) JWTs bound to one request, action, resource and params digest.

The resource is bound by its keyed digest (`rdg`, HMAC under the server's redaction key, as in the ledger);
the `res` claim shows it with credentials masked (``postgres://[redacted]@db/prod``), so a token that leaks
into a log or a process list does not carry the `user:password@` of the resource it is for.

The token is only a *proof*: consuming it still goes through the store, which marks the grant consumed in
one conditional update (`keyturn.workflow.consume_grant`), so a token can be used at most once even though
it stays cryptographically valid until `exp`.

Issuing is deterministic — Ed25519 signatures are deterministic and the claims carry no randomness — so the
server can mint the same token again from the stored grant instead of storing a bearer credential.
Verification takes `now` from the caller (the service's clock) instead of the wall clock, and refuses
anything but EdDSA in the header, so `alg: none` and the HS256-with-the-public-key confusion cannot apply.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keyturn.model import RequestRecord, params_digest
from keyturn.redact import UNKEYED, Redactor, mask
from keyturn.signing_keys import SigningKey

GRANT_TYP = "keyturn-grant+jwt"
ALGORITHM = "EdDSA"
_STRING_CLAIMS = ("jti", "rid", "act", "res", "rdg", "pdg", "sub", "iss")
_TIME_CLAIMS = ("iat", "nbf", "exp")


class GrantError(Exception):
    """The token is not a valid grant for this server; the message says why (never which bytes)."""


@dataclass(frozen=True)
class GrantClaims:
    jti: str  # grant id
    rid: str  # request id
    act: str  # action
    res: str  # resource, credentials masked (for people reading the token; does not bind)
    rdg: str  # keyed digest of the whole resource (binds it): "hmac-sha256:<kid>:<hex>"
    pdg: str  # "sha256:<hex>" of the RFC 8785 canonical params
    sub: str  # requester id
    aud: str
    iss: str
    iat: int
    exp: int


@dataclass(frozen=True)
class IssuedGrant:
    token: str
    claims: GrantClaims


class GrantIssuer:
    """Signs with `key`, or with whatever key `key()` returns at each issue (the key ring's current key,
    so a rotation — on this replica or another — takes effect without a restart)."""

    def __init__(
        self,
        key: SigningKey | Callable[[], SigningKey],
        *,
        issuer: str,
        audience: str,
        redactor: Redactor = UNKEYED,
    ) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.redactor = redactor

    @property
    def key(self) -> SigningKey:
        return self._key if isinstance(self._key, SigningKey) else self._key()

    def issue(
        self,
        record: RequestRecord,
        grant_id: str,
        params: dict[str, Any],
        issued_at: datetime,
        ttl: timedelta,
    ) -> IssuedGrant:
        iat = int(issued_at.timestamp())
        # Rounded down: the token never outlives the grant record it stands for.
        exp = int((issued_at + ttl).timestamp())
        claims = GrantClaims(
            jti=grant_id,
            rid=record.id,
            act=record.request.action,
            res=mask(record.request.resource),
            rdg=self.redactor.digest(record.request.resource),
            pdg=params_digest(params),
            sub=record.request.requester.id,
            aud=self.audience,
            iss=self.issuer,
            iat=iat,
            exp=exp,
        )
        payload = {
            "jti": claims.jti,
            "rid": claims.rid,
            "act": claims.act,
            "res": claims.res,
            "rdg": claims.rdg,
            "pdg": claims.pdg,
            "sub": claims.sub,
            "aud": claims.aud,
            "iss": claims.iss,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
        }
        key = self.key
        token = jwt.encode(
            payload,
            key.private_key,
            algorithm=ALGORITHM,
            headers={"kid": key.kid, "typ": GRANT_TYP},
        )
        return IssuedGrant(token=token, claims=claims)


_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, read once here (PyJWT's own parse is slow and would run twice)."""
    segment = token.split(".", 1)[0]
    if not _B64URL.match(segment):
        raise GrantError("malformed grant: the header is not base64url")
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise GrantError(f"malformed grant: unreadable header ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise GrantError("malformed grant: the header is not a JSON object")
    return header


def verify_grant(
    token: str,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    now: datetime,
    audience: str,
) -> GrantClaims:
    """Check signature, header, audience, lifetime (against `now`) and claim types; return the claims."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise GrantError("malformed grant: expected a compact JWT (three dot-separated parts)")
    header = _header(token)
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise GrantError(f"grant algorithm {alg!r} is not accepted (only {ALGORITHM})")
    if header.get("typ") != GRANT_TYP:
        raise GrantError(f"token type {header.get('typ')!r} is not a grant ({GRANT_TYP})")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise GrantError("grant signed by an unknown key")
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            keys[kid],
            algorithms=[ALGORITHM],
            audience=audience,
            options={
                "require": ["aud", *_STRING_CLAIMS, *_TIME_CLAIMS],
                "verify_exp": False,  # checked below against `now`, not the wall clock
                "verify_nbf": False,
                "verify_iat": False,
                "strict_aud": True,
            },
        )
    except jwt.InvalidSignatureError:
        raise GrantError("grant signature is invalid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise GrantError(f"grant is missing the {exc.claim!r} claim") from None
    except jwt.InvalidAudienceError:
        raise GrantError(f"grant is not for this audience (expected {audience!r})") from None
    except jwt.PyJWTError as exc:
        raise GrantError(f"invalid grant: {exc}") from None
    for name in _STRING_CLAIMS:
        if not isinstance(payload[name], str):
            raise GrantError(f"grant claim {name!r} must be a string")
    for name in _TIME_CLAIMS:
        if not isinstance(payload[name], int) or isinstance(payload[name], bool):
            raise GrantError(f"grant claim {name!r} must be an integer time")
    at = now.timestamp()
    if at >= payload["exp"]:
        raise GrantError("grant has expired")
    if at < payload["nbf"]:
        raise GrantError("grant is not valid yet")
    return GrantClaims(
        jti=payload["jti"],
        rid=payload["rid"],
        act=payload["act"],
        res=payload["res"],
        rdg=payload["rdg"],
        pdg=payload["pdg"],
        sub=payload["sub"],
        aud=payload["aud"],
        iss=payload["iss"],
        iat=payload["iat"],
        exp=payload["exp"],
    )
