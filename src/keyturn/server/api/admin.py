"""`/v1/admin/…`: agent API keys, users-file tokens and the server's signing keys, for the `admin` role.

Every action is appended to the ledger with the admin as actor (`keyturn.admin`); every route answers 403 to
anyone without the admin role, auditors and approvers included.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from keyturn.admin import Admin, api_key_view
from keyturn.server.deps import Caller

router = APIRouter(prefix="/v1/admin", tags=["admin"])

KeyIdPath = Annotated[str, Path(pattern=r"^kt_[A-Za-z0-9]{1,64}$", max_length=100)]
TokenIdPath = Annotated[str, Path(pattern=r"^ktu_[A-Za-z0-9]{1,64}$", max_length=100)]
KidPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,100}$")]


def admin_service(request: Request) -> Admin:
    admin: Admin = request.app.state.admin
    return admin


AdminService = Annotated[Admin, Depends(admin_service)]


class CreateApiKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent: str = Field(
        min_length=1, max_length=206, examples=["deploy-bot"], description="agent:NAME or NAME"
    )
    groups: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=100
    )


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purpose: str = Field(min_length=1, max_length=32, examples=["grant"], description="grant, ledger, …")


@router.get("/api-keys", summary="Agent API keys (never the secrets)")
def list_api_keys(who: Caller, admin: AdminService) -> dict[str, Any]:
    return {"items": [api_key_view(r) for r in admin.list_api_keys(who)]}


@router.post("/api-keys", status_code=201, summary="Create an agent API key (the key is in this answer only)")
def create_api_key(body: CreateApiKeyBody, who: Caller, admin: AdminService) -> dict[str, Any]:
    created = admin.create_api_key(who, body.agent, body.groups)
    return {**api_key_view(created.record), "api_key": created.plaintext}


@router.post("/api-keys/{key_id}/revoke", summary="Revoke an agent API key")
def revoke_api_key(key_id: KeyIdPath, who: Caller, admin: AdminService) -> dict[str, Any]:
    return api_key_view(admin.revoke_api_key(who, key_id))


@router.get("/user-tokens", summary="Personal tokens of the users file (never the secrets)")
def list_user_tokens(who: Caller, admin: AdminService) -> dict[str, Any]:
    return {"items": admin.list_user_tokens(who)}


@router.post("/user-tokens/{token_id}/revoke", summary="Revoke a personal token of the users file")
def revoke_user_token(token_id: TokenIdPath, who: Caller, admin: AdminService) -> dict[str, Any]:
    return admin.revoke_user_token(who, token_id)


@router.get("/signing-keys", summary="The server's keys: current, verifying and retired")
def list_signing_keys(who: Caller, admin: AdminService) -> dict[str, Any]:
    return {"items": [k.as_dict() for k in admin.list_signing_keys(who)]}


@router.post("/signing-keys/rotate", summary="Make a new key current; the old one keeps verifying")
def rotate_signing_key(body: RotateBody, who: Caller, admin: AdminService) -> dict[str, Any]:
    return admin.rotate_signing_key(who, body.purpose).as_dict()


@router.post("/signing-keys/{kid}/retire", summary="Stop an old key from verifying anything")
def retire_signing_key(kid: KidPath, who: Caller, admin: AdminService) -> dict[str, Any]:
    return admin.retire_signing_key(who, kid).as_dict()
