"""Readiness from a background write probe (`/readyz`).

A probe writes to the database every `PROBE_INTERVAL` seconds on a thread of its own, so readiness is
bounded in time, costs no request a database call, takes no request worker thread, and still says "not
ready" while the database cannot take writes (down, partitioned, read-only, disk full).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from keyturn.store import StoreUnavailable

log = logging.getLogger("keyturn.server")

PROBE_INTERVAL = 2.0  # seconds between write probes
PROBE_TIMEOUT = 3.0  # a probe slower than this counts as failed (the database is not taking writes)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    problem: str | None
    code: str | None
    at: float


class Readiness:
    """Probes the database with a real write, on its own thread, and keeps the latest result."""

    def __init__(
        self,
        probe_write: Callable[[], None],
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
    ):
        self.probe_write = probe_write
        self.interval = interval
        self.timeout = timeout
        self.latest = ProbeResult(False, "database: not probed yet", "starting", time.monotonic())
        # A daemon thread of its own, never the request workers': a hung probe cannot take a request's
        # thread nor hold up the process at exit, and a probe still hanging is not started twice.
        self._running: concurrent.futures.Future[None] | None = None

    async def probe(self) -> ProbeResult:
        if self._running is None or self._running.done():
            self._running = self._start_probe()
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._running), self.timeout)
            result = ProbeResult(True, None, None, started)
        except TimeoutError:
            result = ProbeResult(
                False, f"database: no write completed within {self.timeout:g} s", "unavailable", started
            )
        except StoreUnavailable as exc:
            result = ProbeResult(False, f"database: {exc}", exc.code, started)
        except Exception as exc:  # readiness must answer, whatever the database does
            result = ProbeResult(False, f"database: {exc.__class__.__name__}: {exc}", "error", started)
        if result.ok != self.latest.ok:
            log.warning("readiness: %s", "ready" if result.ok else f"not ready ({result.problem})")
        self.latest = result
        return result

    def _start_probe(self) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # running: a probe() that times out cannot cancel it

        def run() -> None:
            try:
                self.probe_write()
            except BaseException as exc:  # handed to the awaiting probe()
                future.set_exception(exc)
            else:
                future.set_result(None)

        threading.Thread(target=run, name="keyturn-readyz", daemon=True).start()
        return future

    def current(self) -> ProbeResult:
        latest = self.latest
        age = time.monotonic() - latest.at
        if latest.ok and age > self.interval + 2 * self.timeout:
            return ProbeResult(
                False, f"database: no probe finished for {age:.0f} s", "unavailable", latest.at
            )
        return latest

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Readiness]:
        """Probe once now (so the first /readyz is accurate), then every `interval` in the background."""
        await self.probe()

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval)
                await self.probe()

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
