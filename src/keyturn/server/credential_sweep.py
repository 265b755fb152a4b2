"""One shared re-check of the credentials of every open long-poll and SSE stream (issue #13 §2, #12).

A stream authenticates once when it opens. Before, each stream then re-authenticated on its own every few
seconds, through the worker-thread pool: ten thousand idle streams meant thousands of reads a second and a
pool too busy to serve the approval they were waiting for. Here one task does it for all of them, every
`interval` seconds: it re-authenticates each *distinct* credential once (ten thousand streams of one agent
cost one check), in one thread-pool call per batch, and wakes only the waiters whose credential was
revoked, expired or now names someone else. A credential with an expiry (a JWT's `exp`) also gets one timer,
so its streams close at that instant, not at the next sweep.

The task runs only while something is watched: it starts with the first waiter and ends with the last, so
it needs no start or stop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from anyio import to_thread

from keyturn.identity.errors import AuthenticationError
from keyturn.model import Principal, same_identity

log = logging.getLogger("keyturn.server.credential_sweep")

RECHECK_SECONDS = 5.0
BATCH = 256  # credentials re-authenticated per thread-pool call, so one sweep never holds a worker long

Headers = tuple[str | None, str | None]  # (Authorization, X-API-Key): what identifies a credential
Authenticate = Callable[[str | None, str | None], Principal]
Wake = Callable[[], None]


class Credential:
    """One credential and the waiters that use it."""

    __slots__ = ("expiry_timer", "headers", "principal", "refusal", "waiters")

    def __init__(self, headers: Headers, principal: Principal) -> None:
        self.headers = headers
        self.principal = principal
        self.refusal: AuthenticationError | None = None
        self.waiters: set[Wake] = set()
        self.expiry_timer: asyncio.TimerHandle | None = None

    @property
    def expires_at(self) -> datetime | None:
        authn = self.principal.authn
        return authn.expires_at if authn is not None else None

    def current(self) -> Principal:
        """The caller now; AuthenticationError once the credential is revoked, expired or names another."""
        if self.refusal is not None:
            raise self.refusal
        expires_at = self.expires_at
        if expires_at is not None and datetime.now(UTC) >= expires_at:
            raise AuthenticationError("the credential of this stream has expired")
        return self.principal

    def refuse(self, refusal: AuthenticationError) -> None:
        if self.refusal is None:
            self.refusal = refusal
        for wake in list(self.waiters):
            wake()


class CredentialSweep:
    def __init__(self, authenticate: Authenticate, *, interval: float = RECHECK_SECONDS) -> None:
        self._authenticate = authenticate
        self.interval = interval
        self._credentials: dict[Headers, Credential] = {}
        self._task: asyncio.Task[None] | None = None
        self.sweeps = 0  # for tests and metrics: how many sweeps ran

    @property
    def watched(self) -> int:
        """Distinct credentials watched now."""
        return len(self._credentials)

    @contextlib.contextmanager
    def watching(self, headers: Headers, who: Principal, wake: Wake) -> Iterator[Credential]:
        """While inside, `wake()` is called (on this loop) when the credential stops being valid; the
        yielded credential's `current()` then raises AuthenticationError."""
        credential = self._credentials.get(headers)
        if credential is None or credential.refusal is not None:
            credential = Credential(headers, who)
            self._credentials[headers] = credential
            self._arm_expiry(credential)
        credential.waiters.add(wake)
        self._ensure_running()
        try:
            yield credential
        finally:
            credential.waiters.discard(wake)
            if not credential.waiters and self._credentials.get(headers) is credential:
                del self._credentials[headers]
                if credential.expiry_timer is not None:
                    credential.expiry_timer.cancel()

    def _arm_expiry(self, credential: Credential) -> None:
        expires_at = credential.expires_at
        if expires_at is None:
            return
        delay = max(0.0, (expires_at - datetime.now(UTC)).total_seconds())
        credential.expiry_timer = asyncio.get_running_loop().call_later(
            delay, credential.refuse, AuthenticationError("the credential of this stream has expired")
        )

    def _ensure_running(self) -> None:
        # A task of a loop that has since closed (a test client's) never finishes: start one on this loop.
        if self._task is None or self._task.done() or self._task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.create_task(self._run(), name="keyturn-credential-sweep")

    async def _run(self) -> None:
        while self._credentials:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except Exception:  # a failing sweep must not end the next ones
                log.exception("credential sweep failed")

    async def sweep(self) -> None:
        """Re-authenticate every watched credential once; refuse those that no longer pass."""
        self.sweeps += 1
        started = time.monotonic()
        pending = [c for c in self._credentials.values() if c.refusal is None]
        for start in range(0, len(pending), BATCH):
            batch = pending[start : start + BATCH]
            outcomes = await to_thread.run_sync(self._check_batch, [c.headers for c in batch])
            for credential, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, AuthenticationError):
                    credential.refuse(outcome)
                elif not same_identity(outcome.id, credential.principal.id):
                    credential.refuse(AuthenticationError("the credential of this stream names someone else"))
                else:  # fresh groups: a reviewer removed from a group stops seeing its requests
                    credential.principal = outcome
        log.debug("swept %d credentials in %.3f s", len(pending), time.monotonic() - started)

    def _check_batch(self, batch: list[Headers]) -> list[Principal | AuthenticationError]:
        outcomes: list[Principal | AuthenticationError] = []
        for authorization, x_api_key in batch:
            try:
                outcomes.append(self._authenticate(authorization, x_api_key))
            except AuthenticationError as exc:
                outcomes.append(exc)
        return outcomes
