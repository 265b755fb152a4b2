"""Human accounts, as the console's service sees them: sessions, passkeys, the one-time ceremonies of a
login or a passkey registration, and linked chat accounts.

The console is a transport: it reaches these through `Keyturn.accounts` and never the store, so what
holds for every other surface (one service, the ledger written in the same transaction as the change)
holds for the console too. A passkey's registration and revocation are ledger events (`passkey.registered`
carries the public key), so `keyturn ledger verify` checks each passkey-signed review against the key the
log registered for its reviewer, offline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from keyturn.errors import Conflict, NotFound
from keyturn.identity.sessions import ConsoleSessions
from keyturn.model import Event, EventType, Principal
from keyturn.store.chat import ChatAccounts, ChatLink
from keyturn.store.console import PasskeyRow, PendingLogin, SqlConsoleRepository
from keyturn.store.errors import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from keyturn.store import Store

__all__ = ["Accounts"]


class Accounts:
    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self._console = SqlConsoleRepository(store, clock=clock)
        self._chat = ChatAccounts(store)
        self._clock = clock

    def sessions(self, *, idle_timeout: timedelta, absolute_timeout: timedelta) -> ConsoleSessions:
        return ConsoleSessions(
            self._console, idle_timeout=idle_timeout, absolute_timeout=absolute_timeout, clock=self._clock
        )

    # --- one-time ceremonies (an OIDC login under way, a passkey registration) ----------------------

    def begin_ceremony(self, key: str, *, nonce: str, code_verifier: str, return_to: str) -> None:
        self._console.add_login(
            PendingLogin(
                state=key,
                nonce=nonce,
                code_verifier=code_verifier,
                return_to=return_to,
                created_at=self._clock(),
            )
        )

    def take_ceremony(self, key: str) -> PendingLogin | None:
        """The ceremony started under `key`, gone once taken: each is answered at most once."""
        return self._console.take_login(key)

    # --- passkeys -----------------------------------------------------------------------------------

    def passkeys(self, principal: Principal) -> list[PasskeyRow]:
        """`principal`'s passkeys that are not revoked."""
        return [p for p in self._console.passkeys(principal.id) if p.revoked_at is None]

    def passkey(self, credential_id: str) -> PasskeyRow | None:
        return self._console.passkey(credential_id)

    def register_passkey(
        self,
        principal: Principal,
        *,
        credential_id: str,
        public_key: str,
        sign_count: int,
        name: str,
        transports: Sequence[str],
        rp_id: str,
        origin: str,
    ) -> PasskeyRow:
        """Keep a verified registration (base64url id and COSE key, as WebAuthn gives them) and ledger it in
        the same transaction. `Conflict` when this credential is registered already."""
        from keyturn.passkeys import hex_of

        now = self._clock()
        row = PasskeyRow(
            credential_id=credential_id,
            principal_id=principal.id,
            public_key=public_key,
            sign_count=sign_count,
            name=name,
            transports=tuple(transports),
            created_at=now,
            last_used_at=None,
            revoked_at=None,
        )
        section = {
            "key_id": hex_of(credential_id),
            "public_key": hex_of(public_key),
            "rp_id": rp_id,
            "origin": origin,
            "name": name,
        }
        event = _event(EventType.PASSKEY_REGISTERED, principal, now, {"passkey": section})
        try:
            self._console.add_passkey(row, (event,))
        except StoreUnavailable:
            raise
        except StoreError as exc:
            raise Conflict(str(exc), {"field": "credential"}) from exc
        return row

    def revoke_passkey(self, principal: Principal, credential_id: str) -> None:
        """Revoke one of `principal`'s passkeys (ledgered); `NotFound` when it is not theirs or revoked."""
        from keyturn.passkeys import hex_of

        now = self._clock()
        try:
            key_id = hex_of(credential_id)
        except ValueError:
            raise NotFound("no such passkey of yours", {"field": "credential_id"}) from None
        event = _event(EventType.PASSKEY_REVOKED, principal, now, {"passkey": {"key_id": key_id}})
        if not self._console.revoke_passkey(credential_id, principal.id, (event,)):
            raise NotFound("no such passkey of yours (or it is revoked already)", {"field": "credential_id"})

    def use_passkey(self, credential_id: str, old_count: int, new_count: int, at: datetime) -> bool:
        """Record an assertion's sign count; False when it moved meanwhile (a concurrent or cloned use)."""
        return self._console.use_passkey(credential_id, old_count, new_count, at)

    # --- linked chat accounts -----------------------------------------------------------------------

    def chat_links(self, principal: Principal) -> list[ChatLink]:
        return self._chat.links_of(principal.id)

    def unlink_chat(self, principal: Principal, provider: str, team_id: str, user_id: str) -> None:
        """Unlink one of `principal`'s chat accounts: its clicks count for nobody until linked again."""
        if not self._chat.unlink(provider, team_id, user_id, principal.id):
            raise NotFound("no such linked chat account of yours", {"field": "account"})


def _event(kind: EventType, principal: Principal, now: datetime, payload: dict[str, object]) -> Event:
    return Event(type=kind, actor=principal.id, request_id=None, payload=payload, ts=now)
