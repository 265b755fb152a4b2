"""Policy explain and dry-run: what policy would decide for a request, and why. Records nothing."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from keyturn.model import ActionRequest
from keyturn.server.console.routes import ConsoleDep, Session, page
from keyturn.server.deps import Service

router = APIRouter(include_in_schema=False)


@router.get("/console/policy")
def policy_page(
    request: Request,
    con: ConsoleDep,
    svc: Service,
    s: Session,
    action: Annotated[str, Query(max_length=200)] = "",
    resource: Annotated[str, Query(max_length=2000)] = "",
    params: Annotated[str, Query(max_length=20_000)] = "{}",
) -> HTMLResponse:
    result: dict[str, Any] | None = None
    error = ""
    if action:
        try:
            parsed = json.loads(params or "{}")
            if not isinstance(parsed, dict):
                raise ValueError('params: a JSON object, e.g. {"rows": 10}')
            verdict = svc.dry_run(
                ActionRequest(action=action, resource=resource, params=parsed, requester=s.principal)
            )
            route = verdict.route
            result = {
                "decision": verdict.decision.value,
                "reason": verdict.reason,
                "rules": [m.model_dump(mode="json") for m in verdict.rules],
                "requirements": [r.describe() for r in route.requirements] if route else [],
                "step_up": route.step_up if route else False,
                "editable": list(route.editable) if route else [],
                "ttl": str(route.ttl) if route else None,
                "revision": verdict.policy_revision,
            }
        except (ValueError, ValidationError) as exc:
            error = str(exc).splitlines()[0][:300]
    return page(
        con,
        request,
        "policy.html",
        who=s.principal,
        action=action,
        resource=resource,
        params=params,
        result=result,
        error=error,
        revision=svc.loaded_policy_revision,
    )
