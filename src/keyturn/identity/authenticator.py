"""`Authenticator`: the one place a request's caller is decided, from its headers only.

Accepted credentials, by shape of the token:

| credential | header | principal |
|---|---|---|
| agent API key `kt_<id>_<secret>` | `X-API-Key: …` or `Authorization: Bearer …` | agent (database) |
| personal token `ktu_<id>_<secret>` | same | human (users file) |
| JWT of a configured issuer | `Authorization: Bearer …` | human or agent, as the issuer is configured |

Nothing in a request body can name or change the caller.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Sequence
from typing import Any

import httpx
import jwt

from keyturn.config import Settings
from keyturn.identity.api_keys import ApiKeyRepository, authenticate_api_key
from keyturn.identity.errors import AuthenticationError
from keyturn.identity.oidc import INVALID_TOKEN, IssuerVerifier, JwksCache
from keyturn.identity.tokens import API_KEY_PREFIX, USER_TOKEN_PREFIX
from keyturn.identity.users import UsersFile
from keyturn.model import Authentication, AuthMethod, Principal
from keyturn.store import SqlApiKeyRepository, Store

MISSING = "missing credentials: send `Authorization: Bearer <token>` or `X-API-Key: <key>`"
MAX_CREDENTIAL_LENGTH = 16_384


class Authenticator:
    def __init__(
        self,
        *,
        api_keys: ApiKeyRepository | None = None,
        users: UsersFile | None = None,
        issuers: Sequence[IssuerVerifier] = (),
    ) -> None:
        self.api_keys = api_keys
        self.users = users
        self.issuers = tuple(issuers)

    def authenticate(self, authorization: str | None, x_api_key: str | None) -> Principal:
        bearer = _bearer(authorization) if authorization else None
        key = x_api_key.strip() if x_api_key else None
        if bearer and key and bearer != key:
            raise AuthenticationError("send one credential: `Authorization` and `X-API-Key` differ")
        credential = bearer or key
        if not credential:
            raise AuthenticationError(MISSING)
        if len(credential) > MAX_CREDENTIAL_LENGTH:
            raise AuthenticationError("credential is too long")
        if credential.startswith(f"{USER_TOKEN_PREFIX}_"):
            if self.users is None:
                raise AuthenticationError("user tokens are not enabled on this server (no users file)")
            return _by(self.users.authenticate(credential), AuthMethod.USER_TOKEN)
        if credential.startswith(f"{API_KEY_PREFIX}_"):
            if self.api_keys is None:
                raise AuthenticationError("API keys are not enabled on this server")
            return _by(authenticate_api_key(self.api_keys, credential), AuthMethod.API_KEY)
        if credential.count(".") == 2:
            if bearer is None:
                raise AuthenticationError("send a JWT as `Authorization: Bearer <token>`, not as X-API-Key")
            return self._jwt(credential)
        raise AuthenticationError("unrecognised credential: expected an API key, a user token or a JWT")

    def _jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            # Unverified on purpose: only to pick the issuer whose keys then verify everything.
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, binascii.Error, json.JSONDecodeError, UnicodeDecodeError):
            raise AuthenticationError(f"{INVALID_TOKEN}: malformed JWT") from None
        issuer = unverified.get("iss")
        candidates = [v for v in self.issuers if v.settings.issuer == issuer]
        if not candidates:
            raise AuthenticationError(f"{INVALID_TOKEN}: issuer is not trusted by this server")
        failure: AuthenticationError | None = None
        for verifier in candidates:  # the same issuer may be configured for several audiences
            try:
                return verifier.authenticate(token, header)
            except AuthenticationError as exc:
                failure = exc
        assert failure is not None
        raise failure


def _by(principal: Principal, method: AuthMethod) -> Principal:
    """Record how the caller authenticated: a long-lived token proves no recent presence (no `at`)."""
    return principal.model_copy(update={"authn": Authentication(method=method)})


def _bearer(authorization: str) -> str:
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthenticationError("the Authorization header must be `Bearer <token>`")
    return value.strip()


def build_authenticator(
    settings: Settings,
    store: Store,
    *,
    http: httpx.Client | None = None,
    min_refresh_interval: float = 30.0,
) -> Authenticator:
    """The server's authenticator: API keys from `store`, the users file and the configured issuers.

    Raises `UsersFileError` when the users file is invalid (the server must not start half-configured).
    Issuers' keys are fetched lazily, so an identity provider that is down does not stop the server.
    """
    users = UsersFile(settings.users_file) if settings.users_file is not None else None
    client = http or httpx.Client(timeout=httpx.Timeout(5.0), follow_redirects=False)
    verifiers = [
        IssuerVerifier(
            issuer,
            JwksCache(issuer, client, min_refresh_interval=min_refresh_interval),
            roles_for=(lambda pid: u.principal() if (u := users.user(pid)) else None) if users else None,
        )
        for issuer in settings.issuers
    ]
    return Authenticator(api_keys=SqlApiKeyRepository(store), users=users, issuers=verifiers)
