"""Dry-run evaluation, the public keys (JWKS), health, readiness and metrics.

Liveness (`/healthz`) is answered on the event loop and touches nothing else: not the database, not the
worker threads, so a stalled database never gets a live replica killed. Readiness (`/readyz`) reports
what the background write probe (`keyturn.server.readiness`) last found: bounded in time, no database
call per request, and "not ready" while the database cannot take writes.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from keyturn.errors import ServiceError
from keyturn.model import ActionRequest, Principal, PrincipalKind
from keyturn.operations import Operations
from keyturn.server.api.schemas import EvaluateBody
from keyturn.server.deps import Caller, Service
from keyturn.server.readiness import Readiness

router = APIRouter(tags=["system"])
log = logging.getLogger("keyturn.server")


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
    verdict = svc.dry_run(request, now)
    route = verdict.route
    return {
        "decision": verdict.decision.value,
        "reason": verdict.reason,
        "rules": [m.model_dump(mode="json") for m in verdict.rules],
        "policy_revision": verdict.policy_revision,
        "route": route.model_dump(mode="json") if route else None,
        "approvers": route.describe() if route else None,
    }


def operations(request: Request) -> Operations:
    ops: Operations = request.app.state.ops
    return ops


Ops = Annotated[Operations, Depends(operations)]


@router.get("/v1/keys", summary="The public keys (JWKS) that verify grants and ledger checkpoints")
def public_keys(svc: Service) -> dict[str, Any]:
    return svc.public_keys()


@router.get("/healthz", summary="Liveness: the process answers (never touches the database)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database takes writes and a policy is loaded")
async def readyz(request: Request, svc: Service, ops: Ops) -> Response:
    readiness: Readiness | None = getattr(request.app.state, "readiness", None)
    result = readiness.current() if readiness is not None else None
    problems = [] if result is None or result.ok else [result.problem]
    body = {
        "status": "ready" if not problems else "not ready",
        "problems": problems,
        "code": None if result is None or result.ok else result.code,
        "policy_revision": svc.loaded_policy_revision,
        **ops.status(),
    }
    status = 200 if not problems else 503
    return Response(json.dumps(body), status_code=status, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
def metrics(ops: Ops) -> Response:
    try:
        ops.refresh_metrics()
    except Exception:  # the other metrics must still be served when the database is down
        log.warning("pending-request gauges not refreshed", exc_info=True)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
