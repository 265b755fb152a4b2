"""Passkeys in the console: register (user verification required), list, revoke, and sign a review.

Registration is a one-time ceremony: its challenge is a database row (any replica may finish it), taken
once. A review's challenge needs no row: it commits to the decision itself (keyturn.passkeys), so an
assertion cannot be replayed onto another request, params, decision or reviewer; a repeat of the same
approval is refused by the workflow (already reviewed), and sign counts must move forward.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import InvalidRegistrationResponse
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from keyturn import passkeys, workflow
from keyturn.model import Authentication, AuthMethod, PasskeyAssertion, Principal, ReviewDecision
from keyturn.server.console import Console
from keyturn.server.console.routes import ConsoleDep, SameOrigin, Session, page
from keyturn.server.deps import Service
from keyturn.service import Keyturn, ServiceError, merge_params
from keyturn.views import request_view

router = APIRouter(include_in_schema=False)

CEREMONY_PREFIX = "passkey-registration:"


@router.get("/console/passkeys")
def passkeys_page(
    request: Request, con: ConsoleDep, svc: Service, s: Session, error: str = ""
) -> HTMLResponse:
    rows = svc.accounts.passkeys(s.principal)
    return page(con, request, "passkeys.html", who=s.principal, rows=rows, error=error)


@router.post("/console/passkeys/options", dependencies=[SameOrigin])
def registration_options(con: ConsoleDep, svc: Service, s: Session) -> Response:
    who = s.principal
    existing = svc.accounts.passkeys(who)
    options = generate_registration_options(
        rp_id=con.rp_id,
        rp_name="keyturn",
        user_name=who.id,
        user_id=who.id.encode("utf-8")[:64],
        user_display_name=who.display_name or who.id,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[
            PublicKeyCredentialDescriptor(id=base64url_to_bytes(p.credential_id)) for p in existing
        ],
    )
    svc.accounts.begin_ceremony(
        CEREMONY_PREFIX + bytes_to_base64url(options.challenge),
        nonce=who.id[:100],
        code_verifier="passkey",
        return_to="",
    )
    return Response(options_to_json(options), media_type="application/json")


@router.post("/console/passkeys", dependencies=[SameOrigin])
async def register(request: Request, con: ConsoleDep, svc: Service, s: Session) -> Response:
    body = await request.json()
    credential = body.get("credential") if isinstance(body, dict) else None
    name = str(body.get("name") or "passkey")[:100] if isinstance(body, dict) else "passkey"
    if not isinstance(credential, dict):
        return JSONResponse({"error": "credential: missing"}, status_code=400)
    try:
        client_data = json.loads(base64url_to_bytes(credential["response"]["clientDataJSON"]))
        challenge = str(client_data["challenge"])
    except (KeyError, TypeError, ValueError):
        return JSONResponse({"error": "credential: unreadable client data"}, status_code=400)
    ceremony = await to_thread.run_sync(svc.accounts.take_ceremony, CEREMONY_PREFIX + challenge)
    if ceremony is None or ceremony.nonce != s.principal.id[:100] or _stale(ceremony.created_at):
        return JSONResponse({"error": "this registration was not started here, or expired"}, status_code=400)
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=base64url_to_bytes(challenge),
            expected_rp_id=con.rp_id,
            expected_origin=con.origin,
            require_user_verification=True,
        )
    except InvalidRegistrationResponse as exc:
        return JSONResponse({"error": f"refused: {exc}"}, status_code=400)
    transports = credential.get("response", {}).get("transports", []) or []
    try:
        await to_thread.run_sync(
            lambda: svc.accounts.register_passkey(
                s.principal,
                credential_id=bytes_to_base64url(verified.credential_id),
                public_key=bytes_to_base64url(verified.credential_public_key),
                sign_count=verified.sign_count,
                name=name,
                transports=[str(t) for t in transports],
                rp_id=con.rp_id,
                origin=con.origin,
            )
        )
    except ServiceError as exc:
        return JSONResponse({"error": exc.message}, status_code=409)
    return JSONResponse({"ok": True})


@router.post("/console/passkeys/{credential_id}/revoke", dependencies=[SameOrigin])
def revoke(credential_id: str, request: Request, con: ConsoleDep, svc: Service, s: Session) -> Response:
    try:
        svc.accounts.revoke_passkey(s.principal, credential_id[:700])
    except ServiceError as exc:
        return passkeys_page(request, con, svc, s, error=exc.message)
    return RedirectResponse("/console/passkeys", status_code=303)


def _stale(created_at: datetime) -> bool:
    return datetime.now(UTC) - created_at > timedelta(minutes=5)


# --- signing a review ---------------------------------------------------------------------------------


def review_statement(
    svc: Keyturn, who: Principal, request_id: str, decision: str, changes: dict[str, Any] | None
) -> dict[str, Any]:
    """The statement a passkey signs for this review, computed as the workflow will (edits merged)."""
    record = svc.get(who, request_id)
    approved = None
    if decision == "approve":
        current = workflow.effective_params(record)
        approved = merge_params(current, changes) if changes is not None else current
    return workflow.review_statement(record, who.id, ReviewDecision(decision), approved, svc.redactor)


@router.post("/console/requests/{request_id}/passkey-options", dependencies=[SameOrigin])
async def review_options(
    request_id: str, request: Request, con: ConsoleDep, svc: Service, s: Session
) -> Response:
    from keyturn.server.console.routes import _changes, _editable_fields

    form = await request.form()
    decision = str(form.get("decision", ""))
    if decision not in ("approve", "deny"):
        return JSONResponse({"error": "decision: approve or deny"}, status_code=400)
    keys = svc.accounts.passkeys(s.principal)
    if not keys:
        return JSONResponse(
            {"error": "you have no passkey yet: register one on the Passkeys page"}, status_code=400
        )
    try:
        record = svc.get(s.principal, request_id)
        view = request_view(record, base_url=svc.settings.base_url, redactor=svc.redactor)
        changes = _changes(form, _editable_fields(view)) if decision == "approve" else None
        document = review_statement(svc, s.principal, request_id, decision, changes)
    except ServiceError as exc:
        return JSONResponse({"error": exc.message}, status_code=400)
    options = generate_authentication_options(
        rp_id=con.rp_id,
        challenge=passkeys.new_challenge(document),
        allow_credentials=[
            PublicKeyCredentialDescriptor(id=base64url_to_bytes(p.credential_id)) for p in keys
        ],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return Response(options_to_json(options), media_type="application/json")


def passkey_principal(
    con: Console, svc: Keyturn, who: Principal, raw: str, document: dict[str, Any]
) -> Principal:
    """`who` signing this review with a passkey: verified now against the registered key (ServiceError)."""
    try:
        credential = json.loads(raw)
        credential_id = str(credential["id"])
        response = credential["response"]
        assertion_fields = {
            "authenticator_data": passkeys.hex_of(str(response["authenticatorData"])),
            "client_data_json": passkeys.hex_of(str(response["clientDataJSON"])),
            "signature": passkeys.hex_of(str(response["signature"])),
        }
    except (ValueError, KeyError, TypeError):
        raise ServiceError("passkey: the assertion cannot be read", {"field": "assertion"}) from None
    key = svc.accounts.passkey(credential_id)
    if key is None or key.principal_id != who.id or key.revoked_at is not None:
        raise ServiceError("passkey: not one of your passkeys (or revoked)", {"field": "assertion"})
    assertion = PasskeyAssertion(
        key_id=passkeys.hex_of(credential_id),
        public_key=passkeys.hex_of(key.public_key),
        rp_id=con.rp_id,
        origin=con.origin,
        **assertion_fields,
    )
    problem, new_count = passkeys.verify_assertion(assertion, document, sign_count=key.sign_count)
    if problem is not None:
        raise ServiceError(f"passkey: {problem}", {"field": "assertion"})
    now = datetime.now(UTC)
    if not svc.accounts.use_passkey(credential_id, key.sign_count, new_count, now) and new_count != 0:
        raise ServiceError("passkey: used concurrently (sign count moved); try again", {"field": "assertion"})
    return who.model_copy(
        update={"authn": Authentication(method=AuthMethod.PASSKEY, at=now, passkey=assertion)}
    )
