"""The ledger browser (auditors): events with the checkpoint that covers each, the signed checkpoints, and
an inclusion proof per event to download and check offline (`keyturn ledger check-proof`)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from keyturn.server.console.routes import ConsoleDep, Session, page
from keyturn.server.deps import Service
from keyturn.service import ServiceError

router = APIRouter(include_in_schema=False)

PAGE = 50


@router.get("/console/ledger")
def ledger_page(
    request: Request,
    con: ConsoleDep,
    svc: Service,
    s: Session,
    after_seq: Annotated[int, Query(ge=-1, le=2**53)] = -1,
    request_id: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    try:
        ledger = svc.ledger(s.principal)
        events = ledger.events(after_seq=after_seq, limit=PAGE, request_id=request_id or None)
        checkpoints = ledger.checkpoints()
    except ServiceError as exc:
        return page(con, request, "error.html", 403, who=s.principal, message=exc.message)
    newest = max((c["size"] for c in checkpoints["items"]), default=0)
    head = events["head_seq"]
    return page(
        con,
        request,
        "ledger.html",
        who=s.principal,
        events=events["items"],
        next_after_seq=events["next_after_seq"],
        checkpoints=list(reversed(checkpoints["items"]))[:10],
        keys=checkpoints["keys"],
        covered=newest,
        size=head + 1,
        request_id=request_id or "",
    )


@router.get("/console/ledger/proof/{seq}")
def inclusion_proof(seq: int, request: Request, con: ConsoleDep, svc: Service, s: Session) -> Response:
    try:
        proof = svc.ledger(s.principal).inclusion(seq)
    except ServiceError as exc:
        return page(con, request, "error.html", 404, who=s.principal, message=exc.message)
    return Response(
        json.dumps(proof, indent=2, default=str),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="keyturn-inclusion-{seq}.json"'},
    )


@router.get("/console/ledger/verify")
def verify_now(request: Request, con: ConsoleDep, svc: Service, s: Session) -> HTMLResponse:
    """The live database verified now, as `keyturn ledger verify --database` does: the tree, every stored
    checkpoint's signature, and every passkey-signed review against its reviewer's registered key."""
    try:
        result = svc.ledger(s.principal).verify([], [])
    except ServiceError as exc:
        return page(con, request, "error.html", 403, who=s.principal, message=exc.message)
    return page(
        con,
        request,
        "ledger_verify.html",
        who=s.principal,
        ok=result.ok,
        summary=result.summary(),
        code=result.problem.code if result.problem else "",
    )
