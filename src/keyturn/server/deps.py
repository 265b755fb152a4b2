"""FastAPI dependencies: the service and the authenticated principal."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated

from fastapi import Depends, Header, Request

from keyturn.identity import AuthorizationError
from keyturn.identity.authenticator import ON_BEHALF_OF_HEADER
from keyturn.model import Principal, PrincipalKind, Role, same_identity
from keyturn.server.credential_sweep import Credential, CredentialSweep
from keyturn.service import Keyturn


def service(request: Request) -> Keyturn:
    svc: Keyturn = request.app.state.keyturn
    return svc


def principal(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    """The caller, from `Authorization: Bearer …` or `X-API-Key`. Never from the body."""
    who: Principal = request.app.state.authenticator.authenticate(authorization, x_api_key)
    return who


def watch_credential(
    request: Request, who: Principal, wake: Callable[[], None]
) -> AbstractContextManager[Credential]:
    """For a stream or a long-poll: the caller's credential, re-checked by the app's one shared sweep
    (keyturn.server.credential_sweep) with the call's own headers; `wake()` is called the moment it is
    revoked or expires, and `credential.current()` then raises AuthenticationError."""
    state = request.app.state
    sweep: CredentialSweep | None = getattr(state, "credential_sweep", None)
    if sweep is None:
        sweep = state.credential_sweep = CredentialSweep(state.authenticator.authenticate)
    headers = (request.headers.get("authorization"), request.headers.get("x-api-key"))
    return sweep.watching(headers, who, wake)


def on_behalf_of(request: Request, who: Principal, asserted: str | None) -> tuple[str | None, bool]:
    """`(on_behalf_of, verified)`: proven by the token in `X-Keyturn-On-Behalf-Of-Token`, else as asserted."""
    token = request.headers.get(ON_BEHALF_OF_HEADER)
    if token is None:
        return asserted, False
    human_id: str = request.app.state.authenticator.verify_on_behalf_of(token.strip(), who)
    if asserted is not None and not same_identity(asserted, human_id):
        raise AuthorizationError(
            f"on_behalf_of is {asserted} but {ON_BEHALF_OF_HEADER} proves {human_id}; they must agree"
        )
    return human_id, True


def human(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if who.kind is not PrincipalKind.HUMAN:
        raise AuthorizationError(f"{who.id} is an agent; this endpoint is for humans")
    return who


def auditor(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if Role.AUDITOR not in who.roles:
        raise AuthorizationError(f"{who.id} does not have the auditor role")
    return who


Caller = Annotated[Principal, Depends(principal)]
Human = Annotated[Principal, Depends(human)]
Auditor = Annotated[Principal, Depends(auditor)]
Service = Annotated[Keyturn, Depends(service)]
