"""Console login with OpenID Connect: authorization code + PKCE (S256) with authlib.

The flow's state (state, nonce, PKCE verifier, where to return) is a database row, used once, so the
callback may land on any replica. The ID token is verified with the provider's JWKS (authlib/joserfc) for
issuer, audience (our client id), expiry, nonce and at_hash; then keyturn checks `auth_time` itself, which
authlib does not: it must be present, not in the future, and within `max_age` when a fresh login was asked
for (step-up). The principal is made by the configured issuer's rules (verified email, groups claim, roles
from the users file) and carries method `oidc`, `auth_time`, `amr` and `acr`.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from keyturn.accounts import Accounts
from keyturn.config import ConsoleSettings, IssuerSettings
from keyturn.identity.errors import AuthenticationError
from keyturn.identity.oidc import IssuerVerifier
from keyturn.model import Authentication, AuthMethod, Principal

if TYPE_CHECKING:
    from authlib.integrations.httpx_client import AsyncOAuth2Client

log = logging.getLogger("keyturn.console")

LEEWAY_SECONDS = 60
METADATA_MAX_AGE = 900.0


class LoginFailed(AuthenticationError):
    pass


@dataclass(frozen=True)
class OidcLogin:
    """What the console needs to log people in with one issuer."""

    issuer: IssuerSettings
    verifier: IssuerVerifier
    client_id: str
    client_secret: str
    redirect_url: str
    scopes: str


class OidcLoginFlow:
    def __init__(self, login: OidcLogin, accounts: Accounts, http: httpx.AsyncClient) -> None:
        self.login = login
        self.accounts = accounts
        self._http = http
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0

    async def start(self, return_to: str, *, max_age: int | None = None) -> str:
        """The provider URL to send the browser to. `max_age` asks for a fresh login (step-up)."""
        metadata = await self._discover()
        state = secrets.token_urlsafe(24)
        nonce = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        extra: dict[str, Any] = {"nonce": nonce}
        if max_age is not None:
            # A fresh login: `max_age` makes the provider re-authenticate and report auth_time; `prompt=login`
            # makes it ask even if its own session is younger.
            extra["max_age"] = max_age
            extra["prompt"] = "login"
        client = self._client()
        url, _ = client.create_authorization_url(
            metadata["authorization_endpoint"], state=state, code_verifier=verifier, **extra
        )
        self.accounts.begin_ceremony(
            state,
            nonce=nonce,
            code_verifier=verifier,
            return_to=return_to + (f"#max_age={max_age}" if max_age is not None else ""),
        )
        return str(url)

    async def finish(self, state: str, code: str) -> tuple[Principal, str]:
        """Exchange the code, verify the ID token; returns the principal and where to go next."""
        pending = self.accounts.take_ceremony(state)
        if pending is None:
            raise LoginFailed("this login link was used already or is unknown; start again")
        if (datetime.now(UTC) - pending.created_at).total_seconds() > 600:
            raise LoginFailed("this login took too long; start again")
        return_to, _, asked = pending.return_to.partition("#max_age=")
        max_age = int(asked) if asked else None
        metadata = await self._discover()
        client = self._client()
        try:
            token = await client.fetch_token(
                metadata["token_endpoint"], code=code, code_verifier=pending.code_verifier
            )
        except Exception as exc:  # authlib raises OAuthError subclasses and httpx errors alike
            log.warning("OIDC token exchange failed: %s", exc)
            raise LoginFailed("the identity provider refused the login (token exchange failed)") from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise LoginFailed("the identity provider sent no ID token")
        claims = await self._verify(id_token, pending.nonce, token.get("access_token"), metadata)
        return self._principal(claims, max_age), return_to

    def _client(self) -> AsyncOAuth2Client:
        # authlib and joserfc load on the first login, not with every server: most have no OIDC console login.
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        return AsyncOAuth2Client(
            client_id=self.login.client_id,
            client_secret=self.login.client_secret,
            scope=self.login.scopes,
            redirect_uri=self.login.redirect_url,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic",
            timeout=10.0,
        )

    async def _discover(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._metadata is not None and now - self._metadata_at < METADATA_MAX_AGE:
            return self._metadata
        url = self.login.issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            response = await self._http.get(url)
            response.raise_for_status()
            metadata = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise LoginFailed(f"the identity provider cannot be reached: {exc}") from None
        if not isinstance(metadata, dict) or metadata.get("issuer") != self.login.issuer.issuer:
            raise LoginFailed(f"{url} does not describe issuer {self.login.issuer.issuer}")
        self._metadata, self._metadata_at = metadata, now
        return metadata

    async def _verify(
        self, id_token: str, nonce: str, access_token: Any, metadata: dict[str, Any]
    ) -> dict[str, Any]:
        from authlib.oidc.core import CodeIDToken
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet
        from joserfc.jws import JWSRegistry

        try:
            response = await self._http.get(metadata["jwks_uri"])
            response.raise_for_status()
            keys = KeySet.import_key_set(response.json())
            algorithms = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
            decoded = jwt.decode(
                id_token, keys, algorithms=[a for a in algorithms if a != "none"], registry=JWSRegistry()
            )
        except (httpx.HTTPError, ValueError, KeyError, JoseError) as exc:
            raise LoginFailed(f"the ID token does not verify: {exc}") from None
        params: dict[str, Any] = {"nonce": nonce, "client_id": self.login.client_id}
        if isinstance(access_token, str):
            params["access_token"] = access_token
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            {"iss": {"essential": True, "value": self.login.issuer.issuer}},
            params,
        )
        try:
            claims.validate(leeway=LEEWAY_SECONDS)
        except JoseError as exc:
            raise LoginFailed(f"the ID token is not valid: {exc}") from None
        return dict(claims)

    def _principal(self, claims: dict[str, Any], max_age: int | None) -> Principal:
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
            raise LoginFailed(
                "the ID token has no auth_time; keyturn needs it to know how fresh the login is"
            )
        now = time.time()
        if auth_time > now + LEEWAY_SECONDS:
            raise LoginFailed("the ID token says the login happened in the future")
        if max_age is not None and now - auth_time > max_age + LEEWAY_SECONDS:
            raise LoginFailed("the identity provider did not make you log in again; a fresh login is needed")
        principal = self.login.verifier.principal_from_claims(claims)
        amr = claims.get("amr")
        acr = claims.get("acr")
        authn = Authentication(
            method=AuthMethod.OIDC,
            at=datetime.fromtimestamp(auth_time, UTC),
            amr=tuple(a for a in amr if isinstance(a, str)) if isinstance(amr, list) else (),
            acr=acr if isinstance(acr, str) else None,
        )
        return principal.model_copy(update={"authn": authn})


def oidc_login_settings(
    console: ConsoleSettings, issuers: list[IssuerSettings], base_url: str
) -> tuple[IssuerSettings, str] | None:
    """The issuer and redirect URL of console OIDC login, or None when it is not configured."""
    if console.oidc_issuer is None:
        return None
    issuer = next((i for i in issuers if i.issuer == console.oidc_issuer and i.kind == "human"), None)
    if issuer is None:
        raise ValueError(f"console.oidc_issuer {console.oidc_issuer!r} is not one of `issuers` (kind human)")
    if not console.client_id:
        raise ValueError("console.client_id is required with console.oidc_issuer")
    return issuer, console.redirect_url or f"{base_url}/console/login/callback"
