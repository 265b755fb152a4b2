"""Long-lived calls re-check their credential: an SSE stream or a long-poll ends when its token is revoked
or expires, instead of delivering for as long as the connection stays open.

A stream authenticates once when it opens; `CredentialWatch` then re-runs the same authentication every
`interval` seconds (an API key is one primary-key read, a users-file token a `stat`, a JWT a signature check
against cached keys) and at the credential's own expiry (a JWT's `exp`, without the clock-skew leeway a new
call gets). The fresh principal replaces the old one, so a reviewer removed from a group also stops seeing
what that group could see.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from anyio import to_thread

from keyturn.identity.errors import AuthenticationError
from keyturn.model import Principal, same_identity

RECHECK_SECONDS = 5.0

Clock = Callable[[], float]
WallClock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CredentialWatch:
    """The caller of a long-lived call, re-authenticated with the call's own headers as time passes."""

    def __init__(
        self,
        authenticate: Callable[[], Principal],
        principal: Principal,
        *,
        interval: float = RECHECK_SECONDS,
        clock: Clock = time.monotonic,
        wall: WallClock = _utcnow,
    ) -> None:
        self._authenticate = authenticate
        self._principal = principal
        self._interval = interval
        self._clock = clock
        self._wall = wall
        self._checked_at = clock()

    @property
    def expires_at(self) -> datetime | None:
        authn = self._principal.authn
        return authn.expires_at if authn is not None else None

    def wait_seconds(self, longest: float) -> float:
        """How long a waiting loop may sleep before the credential must be looked at again."""
        until = min(longest, self._checked_at + self._interval - self._clock())
        if self.expires_at is not None:
            until = min(until, (self.expires_at - self._wall()).total_seconds())
        return max(0.0, until)

    async def principal(self) -> Principal:
        """The caller now; AuthenticationError once the credential is revoked, expired or names another."""
        if self.expires_at is not None and self._wall() >= self.expires_at:
            raise AuthenticationError("the credential of this stream has expired")
        if self._clock() - self._checked_at >= self._interval:
            fresh = await to_thread.run_sync(self._authenticate)  # raises AuthenticationError
            if not same_identity(fresh.id, self._principal.id):
                raise AuthenticationError("the credential of this stream now names someone else")
            self._principal = fresh
            self._checked_at = self._clock()
        return self._principal
