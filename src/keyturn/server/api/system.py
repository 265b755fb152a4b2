"""Dry-run evaluation, public keys, health, readiness and metrics."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from keyturn.errors import ServiceError
from keyturn.model import ActionRequest, Principal, PrincipalKind
from keyturn.server.api.schemas import EvaluateBody
from keyturn.server.deps import Caller, Service

router = APIRouter(tags=["system"])


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


@router.get("/v1/keys", summary="Public keys (JWK set) for grants and ledger checkpoints")
def keys(svc: Service) -> dict[str, Any]:
    return svc.public_keys()


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers and a policy is loaded")
def readyz(request: Request, svc: Service) -> Response:
    problems = svc.readiness()

    status = 200 if not problems else 503
    body = {
        "status": "ready" if not problems else "not ready",
        "problems": problems,
        "policy_revision": svc.loaded_policy_revision,
    }
    return Response(json.dumps(body), status_code=status, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
