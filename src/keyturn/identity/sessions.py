"""Console sessions: server-side rows behind a cookie, revocable on every replica.

The cookie holds `kts_<43 random characters>`; the database holds only its SHA-256, so a leaked backup
opens no session. Every console request reads the row, so a revocation (logout, the user's sessions page,
an admin) is refused on every replica at once. A session ends after `idle_timeout` without use and, in any
case, `absolute_timeout` after the login; the principal is the one that logged in, with how and when it
authenticated (`Principal.authn`), which is what a `step_up` route asks about.

The cookie is `__Host-keyturn_session; Secure; HttpOnly; SameSite=Lax; Path=/`. Browsers refuse `Secure`
cookies over plain HTTP, so with a loopback `http://127.0.0.1` / `http://localhost` base URL (local
development, `make serve`) it is `keyturn_session` without `Secure`; any other `http://` base URL refuses
to start the console.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from keyturn.identity.errors import AuthenticationError
from keyturn.model import Principal
from keyturn.store.console import SessionRow, SqlConsoleRepository

SESSION_PREFIX = "kts_"
TOUCH_EVERY = timedelta(seconds=30)  # last_seen_at is written at most this often per session
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class SessionRefused(AuthenticationError):
    """No session, or one that is revoked, idle or expired: log in again."""


@dataclass(frozen=True)
class CookiePolicy:
    name: str
    secure: bool


def cookie_policy(base_url: str, *, strict: bool = True) -> CookiePolicy:
    """The session cookie for a server reached at `base_url`; ValueError for a non-loopback http:// URL
    (`strict=False`: the Secure cookie anyway, which such a browser will not keep)."""
    parts = urlsplit(base_url)
    if parts.scheme == "https":
        return CookiePolicy(name="__Host-keyturn_session", secure=True)
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return CookiePolicy(name="keyturn_session", secure=False)
    if not strict:
        # Fail closed: browsers keep no Secure cookie over plain http, so nobody stays logged in.
        return CookiePolicy(name="__Host-keyturn_session", secure=True)
    raise ValueError(
        f"console: public_url {base_url!r} must be https:// (plain http only on 127.0.0.1 / localhost), "
        "so that the session cookie is Secure"
    )


def session_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ActiveSession:
    id_hash: str
    principal: Principal
    created_at: datetime
    expires_at: datetime


class ConsoleSessions:
    def __init__(
        self,
        repository: SqlConsoleRepository,
        *,
        idle_timeout: timedelta,
        absolute_timeout: timedelta,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.repository = repository
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self._clock = clock or (lambda: datetime.now(UTC))

    def create(self, principal: Principal, user_agent: str) -> tuple[str, ActiveSession]:
        """A new session for `principal`; returns the cookie value (shown once) and the session."""
        token = SESSION_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        row = SessionRow(
            id_hash=session_hash(token),
            principal_id=principal.id,
            principal=principal.model_dump(mode="json"),
            created_at=now,
            last_seen_at=now,
            expires_at=now + self.absolute_timeout,
            revoked_at=None,
            revoked_by=None,
            user_agent=user_agent[:300],
        )
        self.repository.add_session(row)
        return token, _active(row)

    def authenticate(self, token: str | None) -> ActiveSession:
        if not token or not token.startswith(SESSION_PREFIX) or len(token) > 100:
            raise SessionRefused("not logged in")
        row = self.repository.session(session_hash(token))
        if row is None:
            raise SessionRefused("not logged in")
        now = self._clock()
        if row.revoked_at is not None:
            raise SessionRefused("this session was ended; log in again")
        if now >= row.expires_at:
            raise SessionRefused("this session has expired; log in again")
        if now - row.last_seen_at >= self.idle_timeout:
            raise SessionRefused("this session was idle too long; log in again")
        if now - row.last_seen_at >= TOUCH_EVERY:
            self.repository.touch_session(row.id_hash, now)
        return _active(row)

    def end(self, token: str, by: str) -> bool:
        return self.repository.revoke_session(session_hash(token), by)

    def revoke(self, id_hash: str, by: Principal, *, any_user: bool) -> bool:
        """Revoke a session by its id (hash): an admin's any session, a user's own only."""
        return self.repository.revoke_session(id_hash, by.id, principal_id=None if any_user else by.id)

    def live(self, principal_id: str | None = None) -> list[SessionRow]:
        return self.repository.sessions(principal_id=principal_id, live_at=self._clock())


def _active(row: SessionRow) -> ActiveSession:
    return ActiveSession(
        id_hash=row.id_hash,
        principal=Principal.model_validate(row.principal),
        created_at=row.created_at,
        expires_at=row.expires_at,
    )
