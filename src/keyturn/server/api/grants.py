"""Grant consumption: the one moment an approved action may start."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from keyturn.server.api.schemas import ConsumeBody
from keyturn.server.deps import Caller, Service
from keyturn.service import Consumed

router = APIRouter(prefix="/v1/grants", tags=["grants"])


@router.post("/consume", summary="Consume a grant, exactly once; returns the approved action")
def consume(body: ConsumeBody, who: Caller, svc: Service) -> dict[str, Any]:
    return consumed_view(svc.consume(who, body.grant))


def consumed_view(consumed: Consumed) -> dict[str, Any]:
    """What may run now: also the `execution` of a submit with `execute: true` (`POST /v1/actions`)."""
    record = consumed.record
    return {
        "request_id": record.id,
        "status": record.status.value,
        "action": record.request.action,
        "resource": record.request.resource,
        "params": consumed.params,
        "edited": consumed.params != record.request.params,
        "secrets": consumed.secrets,
    }
