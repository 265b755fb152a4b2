"""Administration without touching the database: agent API keys, users-file tokens and the server's keys.

Every call needs the `admin` role (DESIGN §1: no role implies another, so an auditor or an approver cannot
administer), knows no transport (the API and the CLI map its errors), and appends what it did to the ledger
with the admin as actor. An API key's creation and revocation are in the same transaction as their event;
a users-file edit or a key rotation is followed by its event (a file and a key ring are not in that
transaction).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keyturn.errors import Forbidden, NotFound, ServiceError
from keyturn.identity.api_keys import generate_api_key
from keyturn.identity.errors import UsersFileError
from keyturn.identity.users import read_users, remove_user_token
from keyturn.ledger.checkpointer import key_name, register_keys
from keyturn.model import Event, EventType, Principal, Role
from keyturn.signing_keys import SECRET_PURPOSES, KeyInfo, KeyRing, KeyRingError, check_purpose
from keyturn.store import SqlApiKeyRepository, Store
from keyturn.store.records import ApiKeyRecord

_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")


def agent_principal(agent: str) -> str:
    """`deploy-bot` or `agent:deploy-bot` -> `agent:deploy-bot`; ValueError for anything else."""
    name = agent.strip().removeprefix("agent:")
    if not _AGENT_NAME.fullmatch(name) or len(name) > 200:
        raise ValueError(f"{agent!r} is not a valid agent name (letters, digits, _ . @ -)")
    return f"agent:{name}"


def api_key_view(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "principal": record.principal_id,
        "groups": list(record.groups),
        "created_at": record.created_at.isoformat(),
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
    }


@dataclass(frozen=True)
class CreatedApiKey:
    plaintext: str  # shown once
    record: ApiKeyRecord


class Admin:
    def __init__(
        self,
        store: Store,
        keyring: KeyRing | Callable[[], KeyRing],
        *,
        users_file: Path | None,
        ledger_origin: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self._keyring = keyring  # or how to open it: API-key commands must work without the KEK
        self.users_file = users_file
        self.ledger_origin = ledger_origin
        self.clock = clock
        self.api_keys = SqlApiKeyRepository(store)

    # --- agent API keys -----------------------------------------------------------------------------

    def create_api_key(self, admin: Principal, agent: str, groups: Sequence[str]) -> CreatedApiKey:
        self._require(admin)
        try:
            principal_id = agent_principal(agent)
        except ValueError as exc:
            raise ServiceError(f"agent: {exc}", {"field": "body.agent"}) from None
        names = sorted({g.strip() for entry in groups for g in entry.split(",") if g.strip()})
        now = self.clock()
        plaintext, record = generate_api_key(principal_id, names, now)
        event = self._event(
            EventType.API_KEY_CREATED, admin, now, key_id=record.key_id, principal=principal_id, groups=names
        )
        self.api_keys.add(record, (event,))
        return CreatedApiKey(plaintext, record)

    def list_api_keys(self, admin: Principal) -> list[ApiKeyRecord]:
        self._require(admin)
        return self.api_keys.list()

    def revoke_api_key(self, admin: Principal, key_id: str) -> ApiKeyRecord:
        self._require(admin)
        key_id = "_".join(key_id.strip().split("_")[:2])  # a pasted whole key is reduced to its id
        existing = self.api_keys.get(key_id)
        if existing is None:
            raise NotFound(f"no API key {key_id}")
        event = self._event(
            EventType.API_KEY_REVOKED, admin, self.clock(), key_id=key_id, principal=existing.principal_id
        )
        if not self.api_keys.revoke(key_id, (event,)):
            at = existing.revoked_at.isoformat() if existing.revoked_at else "meanwhile"
            raise ServiceError(f"API key {key_id} was already revoked at {at}")
        revoked = self.api_keys.get(key_id)
        assert revoked is not None
        return revoked

    # --- users-file tokens --------------------------------------------------------------------------

    def list_user_tokens(self, admin: Principal) -> list[dict[str, Any]]:
        self._require(admin)
        document = read_users(self._users_path())
        return [
            {"token_id": t.id, "user": u.id, "name": t.name, "created_at": t.created.isoformat()}
            for u in document.users
            for t in u.tokens
        ]

    def revoke_user_token(self, admin: Principal, token_id: str) -> dict[str, Any]:
        self._require(admin)
        token_id = "_".join(token_id.strip().split("_")[:2])
        try:
            user_id, token = remove_user_token(self._users_path(), token_id)
        except UsersFileError as exc:
            raise NotFound(str(exc)) from None
        now = self.clock()
        self.store.append_events(
            (self._event(EventType.USER_TOKEN_REVOKED, admin, now, token_id=token_id, user=user_id),)
        )
        return {"token_id": token.id, "user": user_id, "name": token.name, "revoked_at": now.isoformat()}

    def _users_path(self) -> Path:
        if self.users_file is None:
            raise NotFound("this server has no users file (user tokens come from it)")
        return self.users_file

    # --- the server's keys --------------------------------------------------------------------------

    def list_signing_keys(self, admin: Principal) -> list[KeyInfo]:
        self._require(admin)
        return self.keyring.list_keys()

    def rotate_signing_key(self, admin: Principal, purpose: str) -> KeyInfo:
        self._require(admin)
        try:
            check_purpose(purpose)
            previous = self._current_kid(purpose)
            info = self.keyring.rotate(purpose)
        except (KeyRingError, ValueError) as exc:
            raise ServiceError(str(exc), {"field": "body.purpose"}) from None
        now = self.clock()
        if purpose == "ledger":  # a database alone verifies: record the new public key now
            ring = self.keyring
            register_keys(
                self.store, self.ledger_origin, ring.signing_key("ledger"), ring.public_key_map("ledger"), now
            )
        event = self._event(
            EventType.SIGNING_KEY_ROTATED, admin, now, purpose=purpose, kid=info.kid, previous_kid=previous
        )
        self.store.append_events((event,))
        return info

    def retire_signing_key(self, admin: Principal, kid: str) -> KeyInfo:
        self._require(admin)
        try:
            info = self.keyring.retire(kid)
        except KeyRingError as exc:
            raise ServiceError(str(exc)) from None
        now = self.clock()
        if info.purpose == "ledger":
            self.store.retire_ledger_key(key_name(self.ledger_origin, kid), now)
        event = self._event(EventType.SIGNING_KEY_RETIRED, admin, now, purpose=info.purpose, kid=kid)
        self.store.append_events((event,))
        return info

    def _current_kid(self, purpose: str) -> str:
        if purpose in SECRET_PURPOSES:
            return self.keyring.secret_key(purpose).kid
        return self.keyring.signing_key(purpose).kid

    @property
    def keyring(self) -> KeyRing:
        if not isinstance(self._keyring, KeyRing):
            self._keyring = self._keyring()
        return self._keyring

    # --- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _require(who: Principal) -> None:
        if Role.ADMIN not in who.roles:
            raise Forbidden(f"{who.id} does not have the admin role")

    @staticmethod
    def _event(kind: EventType, admin: Principal, now: datetime, **payload: Any) -> Event:
        return Event(type=kind, actor=admin.id, request_id=None, payload=payload, ts=now)
