"""Console pages. Every page reads the session row (revocation holds on every replica); every form that
changes state passes the same-origin check first (CSRF: Fetch Metadata, else the Origin header)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from anyio import to_thread
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sse_starlette.sse import EventSourceResponse

from keyturn import workflow
from keyturn.identity.errors import AuthenticationError
from keyturn.identity.sessions import ActiveSession, SessionRefused
from keyturn.model import Principal, PrincipalKind, ReviewDecision, Role, Status
from keyturn.server.console import Console
from keyturn.server.deps import Service
from keyturn.service import Keyturn, ServiceError
from keyturn.views import request_view

router = APIRouter(include_in_schema=False)

QUEUE_LIMIT = 100


class LoginRequired(Exception):
    def __init__(self, next_path: str, message: str = "") -> None:
        self.next_path = next_path
        self.message = message


class CrossSiteRefused(Exception):
    pass


def console(request: Request) -> Console:
    found: Console = request.app.state.console
    return found


ConsoleDep = Annotated[Console, Depends(console)]


def session(request: Request, con: ConsoleDep) -> ActiveSession:
    token = request.cookies.get(con.cookie.name)
    try:
        return con.sessions.authenticate(token)
    except SessionRefused as exc:
        path = request.url.path if request.method == "GET" else "/console/"
        raise LoginRequired(path, "" if token is None else exc.args[0]) from None


def same_origin(request: Request, con: ConsoleDep) -> None:
    """Refuse a state-changing form posted from another site (CSRF)."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if site is not None and site not in ("same-origin", "none"):
        raise CrossSiteRefused(f"refused: a form from another site ({site})")
    if origin is not None and origin != con.origin:
        raise CrossSiteRefused(f"refused: a form from another origin ({origin})")
    if site is None and origin is None:
        raise CrossSiteRefused("refused: the browser sent neither Sec-Fetch-Site nor Origin")


Session = Annotated[ActiveSession, Depends(session)]
SameOrigin = Depends(same_origin)


def page(con: Console, request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    response: HTMLResponse = con.templates.TemplateResponse(
        request, name, {"now": datetime.now(UTC), **context}, status_code=status_code
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action " + " ".join(["'self'", *_form_targets(con)])
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _form_targets(con: Console) -> list[str]:
    if con.oidc is None:
        return []
    parts = urlsplit(con.oidc.login.issuer.issuer)
    return [f"{parts.scheme}://{parts.netloc}"]


def _safe_next(value: str | None) -> str:
    """Only a path on this server: never an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/console/"
    return value


def _set_session_cookie(con: Console, response: Response, token: str) -> None:
    response.set_cookie(
        con.cookie.name,
        token,
        max_age=int(con.sessions.absolute_timeout.total_seconds()),
        path="/",
        secure=con.cookie.secure,
        httponly=True,
        samesite="lax",
    )


def _end_previous(con: Console, request: Request, who: str) -> None:
    old = request.cookies.get(con.cookie.name)
    if old:
        con.sessions.end(old, who)  # a new login never keeps the old session alive (fixation)


# --- login / logout -----------------------------------------------------------------------------------


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=303)


@router.get("/console/login")
def login_page(request: Request, con: ConsoleDep, next: str = "/console/", error: str = "") -> HTMLResponse:
    return page(
        con,
        request,
        "login.html",
        next=_safe_next(next),
        error=error,
        password_login=con.users is not None,
        oidc_login=con.oidc is not None,
    )


@router.post("/console/login", dependencies=[SameOrigin])
def login_password(
    request: Request,
    con: ConsoleDep,
    user: Annotated[str, Form(max_length=300)],
    password: Annotated[str, Form(max_length=1000)],
    next: Annotated[str, Form(max_length=2000)] = "/console/",
) -> Response:
    if con.users is None:
        return page(
            con,
            request,
            "login.html",
            403,
            next=_safe_next(next),
            error="password login is off",
            password_login=False,
            oidc_login=con.oidc is not None,
        )
    user_id = user if user.startswith("user:") else f"user:{user}"
    try:
        principal = con.users.check_password(user_id, password)
    except AuthenticationError as exc:
        return page(
            con,
            request,
            "login.html",
            401,
            next=_safe_next(next),
            error=exc.args[0],
            password_login=True,
            oidc_login=con.oidc is not None,
        )
    from keyturn.model import Authentication, AuthMethod

    principal = principal.model_copy(
        update={"authn": Authentication(method=AuthMethod.CONSOLE, at=datetime.now(UTC), amr=("pwd",))}
    )
    _end_previous(con, request, principal.id)
    token, _ = con.sessions.create(principal, request.headers.get("user-agent", ""))
    response = RedirectResponse(_safe_next(next), status_code=303)
    _set_session_cookie(con, response, token)
    return response


@router.get("/console/login/oidc")
async def login_oidc(con: ConsoleDep, next: str = "/console/", max_age: int | None = None) -> Response:
    if con.oidc is None:
        return RedirectResponse("/console/login?error=" + quote("OIDC login is not configured"), 303)
    if max_age is not None and not 0 <= max_age <= 86_400:
        max_age = 0
    try:
        url = await con.oidc.start(_safe_next(next), max_age=max_age)
    except AuthenticationError as exc:
        return RedirectResponse("/console/login?error=" + quote(exc.args[0]), 303)
    return RedirectResponse(url, status_code=303)


@router.get("/console/login/callback")
async def login_callback(
    request: Request,
    con: ConsoleDep,
    state: str = "",
    code: str = "",
    error: str = "",
    error_description: str = "",
) -> Response:
    if con.oidc is None:
        return RedirectResponse("/console/login", 303)
    if error or not code or not state:
        message = (
            f"the identity provider refused: {error} {error_description}".strip() if error else "no code"
        )
        return RedirectResponse("/console/login?error=" + quote(message[:300]), 303)
    try:
        principal, return_to = await con.oidc.finish(state[:200], code[:2000])
    except AuthenticationError as exc:
        return RedirectResponse("/console/login?error=" + quote(exc.args[0][:300]), 303)
    if principal.kind is not PrincipalKind.HUMAN:
        return RedirectResponse("/console/login?error=" + quote("agents never log in"), 303)
    await to_thread.run_sync(_end_previous, con, request, principal.id)
    token, _ = await to_thread.run_sync(con.sessions.create, principal, request.headers.get("user-agent", ""))
    response = RedirectResponse(_safe_next(return_to), status_code=303)
    _set_session_cookie(con, response, token)
    return response


@router.post("/console/logout", dependencies=[SameOrigin])
def logout(request: Request, con: ConsoleDep) -> Response:
    token = request.cookies.get(con.cookie.name)
    if token:
        con.sessions.end(token, "logout")
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(con.cookie.name, path="/", secure=con.cookie.secure, httponly=True, samesite="lax")
    return response


# --- the review queue ---------------------------------------------------------------------------------


def _queue(svc: Keyturn, who: Principal, action: str, mine: bool) -> list[dict[str, Any]]:
    if mine:
        records, _ = svc.list(who, status=None, reviewable=False, limit=QUEUE_LIMIT, cursor=None)
        records = [r for r in records if who.id in (r.request.requester.id, r.request.on_behalf_of)]
    else:
        records, _ = svc.list(who, status=Status.PENDING, reviewable=True, limit=QUEUE_LIMIT, cursor=None)
    views = [request_view(r, base_url=svc.settings.base_url, redactor=svc.redactor) for r in records]
    if action:
        views = [v for v in views if action.casefold() in v["action"].casefold()]
    return views


@router.get("/console/")
def queue(request: Request, con: ConsoleDep, svc: Service, s: Session, action: str = "") -> HTMLResponse:
    items = _queue(svc, s.principal, action[:200], False)
    return page(con, request, "queue.html", who=s.principal, items=items, action=action, mine=False)


@router.get("/console/mine")
def mine(request: Request, con: ConsoleDep, svc: Service, s: Session) -> HTMLResponse:
    items = _queue(svc, s.principal, "", True)
    return page(con, request, "queue.html", who=s.principal, items=items, action="", mine=True)


@router.get("/console/queue/rows")
def queue_rows(request: Request, con: ConsoleDep, svc: Service, s: Session, action: str = "") -> HTMLResponse:
    items = _queue(svc, s.principal, action[:200], False)
    return page(con, request, "_queue_rows.html", who=s.principal, items=items)


@router.get("/console/events")
async def events(request: Request, svc: Service, s: Session) -> EventSourceResponse:
    """`changed` whenever any request changes (on any replica); the page then re-fetches its rows."""

    async def stream() -> AsyncIterator[dict[str, str]]:
        async with svc.changes() as changes:
            yield {"event": "ready", "data": "{}"}
            while not await request.is_disconnected():
                if await changes.wait(15.0):
                    yield {"event": "changed", "data": "{}"}

    return EventSourceResponse(stream(), ping=15)


# --- a request ----------------------------------------------------------------------------------------


def _editable_fields(view: dict[str, Any]) -> list[dict[str, Any]]:
    """The route's editable params with their current (redacted-as-shown) values."""
    current = view["approved_params"] if view["approved_params"] is not None else view["params"]
    fields = []
    for path in view["verdict"]["editable"]:
        if not path.startswith("params."):
            continue
        value: Any = current
        for part in path.removeprefix("params.").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        redacted = isinstance(value, dict) and set(value) == {"redacted"}
        fields.append(
            {
                "path": path,
                "value": ""
                if redacted or value is None
                else value
                if isinstance(value, str)
                else json.dumps(value),
                "is_string": isinstance(value, str),
                "redacted": redacted,
            }
        )
    return fields


def _diff(view: dict[str, Any]) -> list[dict[str, Any]]:
    before, after = view["params"], view["approved_params"]
    if after is None or after == before:
        return []
    keys = sorted(set(before) | set(after))
    return [
        {"key": k, "before": json.dumps(before.get(k)), "after": json.dumps(after.get(k))}
        for k in keys
        if before.get(k) != after.get(k)
    ]


def _request_page(
    con: Console,
    request: Request,
    svc: Keyturn,
    who: Principal,
    request_id: str,
    *,
    error: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    record = svc.get(who, request_id)
    view = request_view(record, base_url=svc.settings.base_url, redactor=svc.redactor)
    return page(
        con,
        request,
        "request.html",
        status_code,
        who=who,
        view=view,
        history=svc.history(record),
        may_review=workflow.may_review(record, who, datetime.now(UTC)),
        editable=_editable_fields(view),
        diff=_diff(view),
        grant=svc.grant_token(who, record),
        error=error,
        oidc_login=con.oidc is not None,
    )


@router.get("/console/requests/{request_id}")
def request_page(
    request_id: str, request: Request, con: ConsoleDep, svc: Service, s: Session
) -> HTMLResponse:
    try:
        return _request_page(con, request, svc, s.principal, request_id[:200])
    except ServiceError as exc:
        return page(con, request, "error.html", 404, who=s.principal, message=exc.message)


@router.post("/console/requests/{request_id}/review", dependencies=[SameOrigin])
async def review(request_id: str, request: Request, con: ConsoleDep, svc: Service, s: Session) -> Response:
    form = await request.form()
    decision_text = str(form.get("decision", ""))
    comment = str(form.get("comment", ""))[:4000]
    who = s.principal
    try:
        decision = ReviewDecision(decision_text)
    except ValueError:
        return await to_thread.run_sync(
            lambda: _request_page(
                con, request, svc, who, request_id, error="decision: approve or deny", status_code=400
            )
        )

    def act() -> Response:
        try:
            record = svc.get(who, request_id)
            view = request_view(record, base_url=svc.settings.base_url, redactor=svc.redactor)
            changes = _changes(form, _editable_fields(view)) if decision is ReviewDecision.APPROVE else None
            signer = who
            assertion = form.get("assertion")
            if assertion:
                from keyturn.server.console import passkey_routes

                document = passkey_routes.review_statement(svc, who, request_id, decision.value, changes)
                signer = passkey_routes.passkey_principal(con, svc, who, str(assertion)[:20_000], document)
            svc.review(signer, request_id, decision, comment, changes)
        except ServiceError as exc:
            try:
                return _request_page(con, request, svc, who, request_id, error=exc.message, status_code=400)
            except ServiceError:
                return page(con, request, "error.html", 404, who=who, message=exc.message)
        return RedirectResponse(f"/console/requests/{request_id}", status_code=303)

    return await to_thread.run_sync(act)


def _changes(form: Any, fields: list[dict[str, Any]]) -> dict[str, Any] | None:
    changes: dict[str, Any] = {}
    for field in fields:
        given = form.get(f"edit:{field['path']}")
        if given is None:
            continue
        text = str(given)
        if field["redacted"] and text == "":
            continue  # a redacted value the reviewer did not retype stays as it is
        if text == field["value"]:
            continue
        if field["is_string"]:
            value: Any = text
        else:
            try:
                value = json.loads(text)
            except ValueError:
                raise ServiceError(
                    f"{field['path']}: not a valid JSON value", {"field": field["path"]}
                ) from None
        target = changes
        parts = field["path"].removeprefix("params.").split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return changes or None


# --- sessions -----------------------------------------------------------------------------------------


@router.get("/console/sessions")
def sessions_page(request: Request, con: ConsoleDep, s: Session, error: str = "") -> HTMLResponse:
    admin = Role.ADMIN in s.principal.roles
    rows = con.sessions.live(None if admin else s.principal.id)
    return page(
        con, request, "sessions.html", who=s.principal, rows=rows, current=s.id_hash, admin=admin, error=error
    )


@router.post("/console/sessions/{id_hash}/revoke", dependencies=[SameOrigin])
def revoke_session(id_hash: str, request: Request, con: ConsoleDep, s: Session) -> Response:
    done = con.sessions.revoke(id_hash[:64], s.principal, any_user=Role.ADMIN in s.principal.roles)
    if not done:
        return sessions_page(request, con, s, error="no such session of yours (or it has ended already)")
    if id_hash == s.id_hash:
        return RedirectResponse("/console/login", status_code=303)
    return RedirectResponse("/console/sessions", status_code=303)
