"""JWTs of trusted issuers: OIDC ID tokens / access tokens of humans, workload identity tokens of agents.

Each configured issuer (`settings.issuers`) gets an `IssuerVerifier`. Its signing keys come from the
issuer's JWKS (`jwks_url`, or `jwks_uri` of `{issuer}/.well-known/openid-configuration`), fetched with httpx
on first use and cached. A token whose `kid` is not in the cache triggers a refresh — that is how a key
rotation at the identity provider is picked up — but at most once per `min_refresh_interval`, so tokens
with random kids cannot make keyturn hammer the provider. Keys also expire after `max_age` and are
refreshed on the next use; if that refresh fails, the old keys keep working.

Only asymmetric algorithms are accepted, and the header's `alg` must fit the JWK's key type: `alg: none`
and the classic "HS256 signed with the public key" confusion are refused before any signature check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt

from keyturn.config import IssuerSettings
from keyturn.identity.errors import AuthenticationError
from keyturn.model import Authentication, AuthMethod, Principal, PrincipalKind

log = logging.getLogger("keyturn.identity")

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
INVALID_TOKEN = "invalid bearer token"


class JwksCache:
    """The signing keys of one issuer, by kid."""

    def __init__(
        self,
        issuer: IssuerSettings,
        http: httpx.Client,
        *,
        min_refresh_interval: float = 30.0,
        max_age: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._http = http
        self._min_refresh_interval = min_refresh_interval
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._jwks_url = issuer.jwks_url
        self._keys: dict[str, dict[str, Any]] = {}  # kid ("" when the JWK has none) -> JWK
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self.fetches = 0  # JWKS downloads so far (for metrics and tests)

    def jwk(self, kid: str | None) -> dict[str, Any]:
        """The JWK for a token's kid; refreshes (rate limited) when it is unknown or the cache is old."""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self._max_age
        found = self._lookup(kid)
        if found is None or stale:
            self._refresh(force=found is None)
            found = self._lookup(kid)
        if found is None:
            raise AuthenticationError(f"{INVALID_TOKEN}: signed by a key the issuer does not publish")
        return found

    def _lookup(self, kid: str | None) -> dict[str, Any] | None:
        keys = self._keys
        if kid is None:
            # A token without kid is only unambiguous when the issuer publishes exactly one key.
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    def _refresh(self, *, force: bool) -> None:
        with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._min_refresh_interval:
                return  # rate limited: someone refreshed (or tried) moments ago
            if not force and self._fetched_at is not None and now - self._fetched_at < self._max_age:
                return
            self._attempted_at = now
            try:
                keys = self._download()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("cannot fetch the signing keys of issuer %s: %s", self.issuer.issuer, exc)
                return  # keep the keys we have; a token they do not cover is refused
            self._keys = keys
            self._fetched_at = now
            self.fetches += 1

    def _download(self) -> dict[str, dict[str, Any]]:
        if self._jwks_url is None:
            url = self.issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = self._get_json(url)
            if document.get("issuer") != self.issuer.issuer:
                raise ValueError(f"{url} names issuer {document.get('issuer')!r}, not {self.issuer.issuer!r}")
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise ValueError(f"{url} has no jwks_uri")
            self._jwks_url = jwks_uri
        document = self._get_json(self._jwks_url)
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError(f"{self._jwks_url}: not a JWK set (no `keys` list)")
        keys: dict[str, dict[str, Any]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") in (None, "oct"):
                continue  # symmetric keys are never trusted for identity tokens
            if entry.get("use", "sig") != "sig":
                continue
            kid = entry.get("kid")
            keys[kid if isinstance(kid, str) else ""] = entry
        return keys

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._http.get(url)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError(f"{url}: expected a JSON object")
        return document


class IssuerVerifier:
    """Turns a JWT of one trusted issuer into a `Principal`."""

    def __init__(
        self,
        settings: IssuerSettings,
        jwks: JwksCache,
        *,
        leeway: float = 60.0,
        roles_for: Callable[[str], Principal | None] | None = None,
    ) -> None:
        self.settings = settings
        self.jwks = jwks
        self.leeway = leeway  # clock skew allowed between the identity provider and keyturn
        self._roles_for = roles_for
        self.kind = PrincipalKind(settings.kind)
        self.prefix = settings.id_prefix or ("user:" if self.kind is PrincipalKind.HUMAN else "agent:")

    def authenticate(self, token: str, header: dict[str, Any]) -> Principal:
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise AuthenticationError(f"{INVALID_TOKEN}: algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        jwk_data = self.jwks.jwk(kid if isinstance(kid, str) else None)
        if "alg" in jwk_data and jwk_data["alg"] != alg:
            raise AuthenticationError(f"{INVALID_TOKEN}: algorithm does not match the issuer's key")
        try:
            key = jwt.PyJWK(jwk_data, algorithm=alg)
        except jwt.PyJWTError:
            raise AuthenticationError(f"{INVALID_TOKEN}: algorithm does not match the issuer's key") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError(f"{INVALID_TOKEN}: expired") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError(f"{INVALID_TOKEN}: not issued for keyturn (audience)") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError(f"{INVALID_TOKEN}: not valid yet") from None
        except jwt.PyJWTError:
            raise AuthenticationError(INVALID_TOKEN) from None
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        subject = _claim(claims, self.settings.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError(f"{INVALID_TOKEN}: no {self.settings.subject_claim!r} claim")
        if self.settings.subject_claim == "email":
            # An email is an identity only when the provider vouches for it: some providers let users set
            # an unverified address, which would otherwise impersonate a listed approver or auditor.
            if claims.get("email_verified") is not True:
                raise AuthenticationError(f"{INVALID_TOKEN}: the email address is not verified")
            subject = subject.casefold()  # one person, one principal, however the provider spells it
        groups = _groups(_claim(claims, self.settings.groups_claim))
        principal_id = self.prefix + subject
        roles: frozenset[Any] = frozenset()
        # Roles (admin, auditor) are keyturn's, not the identity provider's: they come from the users file
        # entry of the same id, as do extra groups given there.
        known = self._roles_for(principal_id) if self._roles_for is not None else None
        if known is not None and self.kind is PrincipalKind.HUMAN:
            roles = known.roles
            groups |= known.groups
        name = claims.get("name")
        return Principal(
            id=principal_id,
            kind=self.kind,
            groups=groups,
            roles=roles,
            display_name=name if isinstance(name, str) else None,
            authn=_authentication(claims, self.kind),
        )


def _authentication(claims: dict[str, Any], kind: PrincipalKind) -> Authentication:
    """How the token's subject authenticated. `auth_time` is when the human last logged in at the identity
    provider (OIDC Core §2): what a step-up route's max age is checked against, by keyturn itself."""
    if kind is PrincipalKind.AGENT:
        return Authentication(method=AuthMethod.WORKLOAD_JWT)
    auth_time = claims.get("auth_time")
    at = (
        datetime.fromtimestamp(auth_time, UTC)
        if isinstance(auth_time, int | float) and not isinstance(auth_time, bool)
        else None
    )
    amr = claims.get("amr")
    acr = claims.get("acr")
    return Authentication(
        method=AuthMethod.OIDC,
        at=at,
        amr=tuple(m for m in amr if isinstance(m, str)) if isinstance(amr, list) else (),
        acr=acr if isinstance(acr, str) else None,
    )


def _claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by name, or by dotted path into nested objects (e.g. Keycloak's `realm_access.roles`)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _groups(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(g for g in value.replace(",", " ").split() if g)
    if isinstance(value, list):
        return frozenset(g for g in value if isinstance(g, str) and g)
    return frozenset()
