"""Dry-run evaluation, public keys, health, readiness and metrics.

Liveness (`/healthz`) is answered on the event loop and touches nothing else: not the database, not the
worker threads, so a stalled database never gets a live replica killed. Readiness (`/readyz`) reports
what `Readiness` last found: a background probe writes to the database every `PROBE_INTERVAL` seconds on
a thread of its own, so readiness is bounded in time, costs no request a database call, and still says
"not ready" while the database cannot take writes (down, partitioned, read-only, disk full).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from keyturn.model import ActionRequest, Principal, PrincipalKind
from keyturn.server.api.schemas import EvaluateBody
from keyturn.server.deps import Caller, Service
from keyturn.service import ServiceError
from keyturn.store import StorageFull, Store, StoreUnavailable

router = APIRouter(tags=["system"])
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

    def __init__(self, store: Store, interval: float = PROBE_INTERVAL, timeout: float = PROBE_TIMEOUT):
        self.store = store
        self.interval = interval
        self.timeout = timeout
        self.latest = ProbeResult(False, "database: not probed yet", "starting", time.monotonic())
        # One thread, never the request workers': a hung probe cannot take a request's thread, and a
        # probe still hanging from last time is not started twice.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keyturn-readyz")
        self._running: concurrent.futures.Future[None] | None = None

    async def probe(self) -> ProbeResult:
        if self._running is None or self._running.done():
            self._running = self._executor.submit(self.store.probe_write)
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._running), self.timeout)
            result = ProbeResult(True, None, None, started)
        except TimeoutError:
            result = ProbeResult(
                False, f"database: no write completed within {self.timeout:g} s", "unavailable", started
            )
        except StorageFull as exc:
            result = ProbeResult(False, f"database: {exc}", exc.code, started)
        except StoreUnavailable as exc:
            result = ProbeResult(False, f"database: {exc}", exc.code, started)
        except Exception as exc:  # readiness must answer, whatever the database does
            result = ProbeResult(False, f"database: {exc.__class__.__name__}: {exc}", "error", started)
        if result.ok != self.latest.ok:
            log.warning("readiness: %s", "ready" if result.ok else f"not ready ({result.problem})")
        self.latest = result
        return result

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
            self._executor.shutdown(wait=False, cancel_futures=True)


@router.post("/v1/evaluate", summary="Dry-run the policy on a request; records nothing")
def evaluate(body: EvaluateBody, who: Caller, svc: Service) -> dict[str, Any]:
    requester = who
    if body.requester is not None:
        requester = Principal(
            id=body.requester.id,
            kind=PrincipalKind(body.requester.kind),
            groups=frozenset(body.requester.groups),
        )
    request = ActionRequest(
        action=body.action,
        resource=body.resource,
        params=body.params,
        justification=body.justification,
        context=body.context,
        requester=requester,
        on_behalf_of=body.on_behalf_of,
    )
    now = svc.clock()
    if body.now is not None:
        try:
            now = datetime.fromisoformat(body.now)
        except ValueError:
            raise ServiceError("now: expected an ISO 8601 time", {"field": "body.now"}) from None
        if now.tzinfo is None:
            raise ServiceError("now: the time needs a timezone offset", {"field": "body.now"})
    verdict = svc.policy.current.evaluate(request, now)
    route = verdict.route
    return {
        "decision": verdict.decision.value,
        "reason": verdict.reason,
        "rules": [m.model_dump(mode="json") for m in verdict.rules],
        "policy_revision": verdict.policy_revision,
        "route": route.model_dump(mode="json") if route else None,
        "approvers": route.describe() if route else None,
    }


@router.get("/v1/keys", summary="Public keys (JWK set) for grants and ledger checkpoints")
def keys(svc: Service) -> dict[str, Any]:
    jwks: dict[str, Any] = svc.keyring.jwks()
    return jwks


@router.get("/healthz", summary="Liveness: the process answers (never touches the database)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database takes writes and a policy is loaded")
async def readyz(request: Request) -> Response:
    svc = request.app.state.keyturn
    readiness: Readiness | None = getattr(request.app.state, "readiness", None)
    result = readiness.current() if readiness is not None else None
    problems = [] if result is None or result.ok else [result.problem]
    body = {
        "status": "ready" if not problems else "not ready",
        "problems": problems,
        "code": None if result is None or result.ok else result.code,
        "policy_revision": svc.policy.current.revision,
    }
    status = 200 if not problems else 503
    return Response(json.dumps(body), status_code=status, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
