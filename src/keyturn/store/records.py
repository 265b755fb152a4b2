"""Plain values the store hands in and out besides `RequestRecord` (which lives in `keyturn.model`)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keyturn.model import canonical_json


def new_decision_id() -> str:
    # Time-ordered prefix so decision records sort roughly by creation; random suffix so ids never collide.
    return f"dec_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


@dataclass(frozen=True)
class DecisionRecord:
    """One policy evaluation (allowed ones included): what was asked, what policy said, under which rules."""

    ts: datetime
    request_id: str | None
    request_digest: str  # sha256 of the canonical request, requester id included
    decision: str  # "allow" | "review" | "deny"
    rules: Sequence[str]
    policy_revision: str
    id: str = field(default_factory=new_decision_id)


# --- ledger leaves ------------------------------------------------------------------------------------
# The leaf format is owned by `keyturn.ledger`; it is restated here so the store can hash events inside
# the transaction that appends them. `tests/test_store_ledger.py` pins the exact bytes.


def encode_ts(ts: datetime) -> str:
    """RFC 3339 UTC with exactly six fractional digits and `Z`: one spelling per instant."""
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r} in a ledger event")
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def leaf_bytes(
    seq: int, ts: datetime, type: str, actor: str, request_id: str | None, payload: dict[str, Any]
) -> bytes:
    """RFC 8785 canonical JSON of the event: the bytes a Merkle leaf commits to."""
    return canonical_json(
        {
            "seq": seq,
            "ts": encode_ts(ts),
            "type": type,
            "actor": actor,
            "request_id": request_id,
            "payload": payload,
        }
    )


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


@dataclass(frozen=True)
class StoredEvent:
    """One ledger event as stored: its place in the log and the leaf hash computed when it was appended."""

    seq: int
    ts: datetime
    type: str
    actor: str
    request_id: str | None
    payload: dict[str, Any]
    leaf_hash: str  # hex

    def leaf_bytes(self) -> bytes:
        return leaf_bytes(self.seq, self.ts, self.type, self.actor, self.request_id, self.payload)


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    root_hash: str  # hex
    note: str  # the signed note, verbatim
    key_name: str
    created_at: datetime


@dataclass(frozen=True)
class StoredLedgerKey:
    name: str
    public_key: str
    created_at: datetime
    retired_at: datetime | None
