"""The passkeys a log registered, read in log order while it is verified (stdlib only).

A passkey-signed review carries the public key its signature verifies with; on its own that proves only
that *some* key signed. `passkey.registered` (written in the transaction that stores the key, with the
registering user as actor) anchors each key to a person, so `keyturn ledger verify` also checks that the
key of every signed review is the one the log registered for that reviewer, before the review, and not
revoked since. A slice of a log that does not start at seq 0 may sign with keys registered before it: those
reviews are checked on their own (their signature) and counted, not refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

REGISTERED = "passkey.registered"
REVOKED = "passkey.revoked"


@dataclass(frozen=True)
class Registration:
    seq: int
    principal: str
    public_key: str
    revoked_at: int | None = None  # seq of its revocation


class RegisteredPasskeys:
    def __init__(self, *, complete: bool) -> None:
        self.complete = complete  # read from seq 0: a key the log never registered is no one's key
        self._keys: dict[str, Registration] = {}

    def read(self, event: dict[str, Any], seq: int) -> str | None:
        """Take in a registration or revocation; why it is malformed, or None."""
        payload = event.get("payload")
        section = payload.get("passkey") if isinstance(payload, dict) else None
        key_id = section.get("key_id") if isinstance(section, dict) else None
        if not isinstance(section, dict) or not isinstance(key_id, str):
            return "the passkey section has no key_id"
        known = self._keys.get(key_id)
        if event.get("type") == REGISTERED:
            public_key, actor = section.get("public_key"), event.get("actor")
            if not isinstance(public_key, str) or not isinstance(actor, str):
                return "the registration has no public_key or no actor"
            if known is not None:
                return f"passkey {key_id[:16]}… is registered again (first at seq {known.seq})"
            self._keys[key_id] = Registration(seq, actor, public_key)
        elif known is not None and known.revoked_at is None:
            self._keys[key_id] = replace(known, revoked_at=seq)
        elif self.complete:
            return f"passkey {key_id[:16]}… is revoked but was never registered (or is revoked already)"
        return None

    def review_problem(self, event: dict[str, Any]) -> str | None:
        """Why the key of this passkey-signed review is not its reviewer's registered key (None: it is)."""
        payload = event.get("payload")
        section = payload.get("passkey") if isinstance(payload, dict) else None
        if not isinstance(payload, dict) or not isinstance(section, dict):
            return "the passkey section is missing or not an object"
        key_id = section.get("key_id")
        known = self._keys.get(key_id) if isinstance(key_id, str) else None
        if known is None:
            return "it is signed with a passkey this log never registered" if self.complete else None
        if known.public_key != section.get("public_key"):
            return f"its public key is not the one registered for this passkey at seq {known.seq}"
        if known.principal != payload.get("reviewer"):
            return f"the passkey was registered by {known.principal} (seq {known.seq}), not by the reviewer"
        if known.revoked_at is not None:
            return f"the passkey was revoked at seq {known.revoked_at}"
        return None
