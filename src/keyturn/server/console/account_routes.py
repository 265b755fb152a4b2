"""The user's linked chat accounts (list, unlink) and, for admins, the outbox (due and dead deliveries with
the last error a channel answered; retry a dead one). Both go through the service; every form passes the
same-origin check."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from keyturn.identity.sessions import ActiveSession
from keyturn.server.console import Console
from keyturn.server.console.routes import ConsoleDep, SameOrigin, Session, page
from keyturn.server.deps import Service
from keyturn.service import Keyturn, ServiceError

router = APIRouter(include_in_schema=False)


@router.get("/console/chat-accounts")
def chat_accounts_page(request: Request, con: ConsoleDep, svc: Service, s: Session) -> HTMLResponse:
    return _chat_accounts(request, con, svc, s)


def _chat_accounts(
    request: Request, con: Console, svc: Keyturn, s: ActiveSession, error: str = "", status_code: int = 200
) -> HTMLResponse:
    links = svc.accounts.chat_links(s.principal)
    return page(con, request, "chat_accounts.html", status_code, who=s.principal, links=links, error=error)


@router.post("/console/chat-accounts/unlink", dependencies=[SameOrigin])
def unlink_chat_account(
    request: Request,
    con: ConsoleDep,
    svc: Service,
    s: Session,
    provider: Annotated[str, Form(max_length=50)],
    team_id: Annotated[str, Form(max_length=200)],
    user_id: Annotated[str, Form(max_length=200)],
) -> Response:
    try:
        svc.accounts.unlink_chat(s.principal, provider, team_id, user_id)
    except ServiceError as exc:
        return _chat_accounts(request, con, svc, s, error=exc.message, status_code=404)
    return RedirectResponse("/console/chat-accounts", status_code=303)


@router.get("/console/outbox")
def outbox_page(request: Request, con: ConsoleDep, svc: Service, s: Session) -> HTMLResponse:
    return _outbox(request, con, svc, s)


def _outbox(
    request: Request, con: Console, svc: Keyturn, s: ActiveSession, error: str = "", status_code: int = 200
) -> HTMLResponse:
    try:
        due = svc.outbox_rows(s.principal, "pending")
        dead = svc.outbox_rows(s.principal, "dead")
    except ServiceError as exc:
        return page(con, request, "error.html", 403, who=s.principal, message=exc.message)
    return page(con, request, "outbox.html", status_code, who=s.principal, due=due, dead=dead, error=error)


@router.post("/console/outbox/{row_id}/retry", dependencies=[SameOrigin])
def retry_outbox_row(row_id: str, request: Request, con: ConsoleDep, svc: Service, s: Session) -> Response:
    try:
        svc.retry_outbox(s.principal, row_id[:100])
    except ServiceError as exc:
        return _outbox(request, con, svc, s, error=exc.message, status_code=404)
    return RedirectResponse("/console/outbox", status_code=303)
