"""Plain values the store hands in and out besides `RequestRecord` (which lives in `keyturn.model`)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keyturn.model import Frozen, PrincipalKind, canonical_json


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


_ENCODE_STR = json.encoder.encode_basestring  # the C escaper: `"`, `\\`, controls (short forms, else \\u00xx)
_C_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)  # CPython's C encoder
# Called directly, it skips JSONEncoder's per-call setup. Arguments: markers, default, encoder, indent,
# key separator, item separator, sort_keys, skipkeys, allow_nan.
_C_ENCODE: Any = _C_MAKE_ENCODER and _C_MAKE_ENCODER(
    None, None, _ENCODE_STR, None, ":", ",", True, False, False
)
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _dumps(value: Any) -> str:
    """Compact JSON, keys sorted, non-ASCII as UTF-8: RFC 8785 for the values `_plain` accepts."""
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(value, 0))
    return _ENCODER.encode(value)  # pragma: no cover - interpreters without the C accelerator


_INT_MIN, _INT_MAX = -(2**53) + 1, 2**53 - 1  # RFC 8785: integers must be exact as IEEE doubles


def encode_ts(ts: datetime) -> str:
    """RFC 3339 UTC with exactly six fractional digits and `Z`: one spelling per instant."""
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r} in a ledger event")
    utc = ts if ts.tzinfo is UTC else ts.astimezone(UTC)
    if utc.year < 1000:  # strftime does not zero-pad such years; keep its spelling
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 - the strftime above, 5x cheaper
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond,
    )


def _plain(value: Any) -> bool:
    """True when the standard library's C JSON encoder writes `value` exactly as RFC 8785 does.

    That holds for None, bools, strings, integers in the RFC 8785 range, lists, and objects whose keys are
    ASCII (UTF-16 and code-point order agree on them). Floats (ECMAScript number formatting), tuples,
    subclasses and anything else go through `rfc8785` itself.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or not _plain(item):
                return False
        return True
    if kind is list:
        return all(_plain(item) for item in value)
    return False


def canonical_payload(payload: Any) -> bytes:
    """RFC 8785 canonical JSON of `payload`, byte for byte `canonical_json(payload)`, without its cost.

    A fast path for the values the ledger carries (see `_plain`); anything else uses `rfc8785`.
    """
    if _plain(payload):
        try:
            return _dumps(payload).encode()
        except UnicodeEncodeError:  # a lone surrogate: let rfc8785 raise its own error
            pass
    return canonical_json(payload)


def event_leaf(
    seq: int, ts: datetime, type: str, actor: str, request_id: str | None, payload: dict[str, Any]
) -> tuple[bytes, bytes]:
    """(leaf bytes, canonical payload) of an event; the leaf is `leaf_bytes(...)`.

    With its keys sorted, the canonical event is `{"actor":…,"payload":…,"request_id":…,"seq":…,"ts":…,
    "type":…}`, so it is assembled from the canonical payload and the canonical scalars rather than
    canonicalised twice. Unusual scalars take the reference path.
    """
    canonical = canonical_payload(payload)
    if (
        type.__class__ is str
        and actor.__class__ is str
        and (request_id is None or request_id.__class__ is str)
        and seq.__class__ is int
        and 0 <= seq <= _INT_MAX
    ):
        try:
            leaf = "".join(
                (
                    '{"actor":',
                    _ENCODE_STR(actor),
                    ',"payload":',
                    canonical.decode(),
                    ',"request_id":',
                    "null" if request_id is None else _ENCODE_STR(request_id),
                    ',"seq":',
                    str(seq),
                    ',"ts":"',
                    encode_ts(ts),
                    '","type":',
                    _ENCODE_STR(type),
                    "}",
                )
            ).encode()
        except UnicodeEncodeError:
            pass
        else:
            return leaf, canonical
    return _reference_leaf(seq, ts, type, actor, request_id, payload), canonical


def _reference_leaf(
    seq: int, ts: datetime, type: str, actor: str, request_id: str | None, payload: dict[str, Any]
) -> bytes:
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


def leaf_bytes(
    seq: int, ts: datetime, type: str, actor: str, request_id: str | None, payload: dict[str, Any]
) -> bytes:
    """RFC 8785 canonical JSON of the event: the bytes a Merkle leaf commits to."""
    return event_leaf(seq, ts, type, actor, request_id, payload)[0]


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


class ApiKeyRecord(Frozen):
    """An agent API key as stored: only the secret's hash (keyturn.identity.api_keys makes them)."""

    key_id: str  # "kt_<8 chars>", the start of the plaintext key
    principal_id: str  # "agent:deploy-bot"
    kind: PrincipalKind
    groups: tuple[str, ...]
    secret_hash: str  # "sha256:<hex>" of the whole plaintext key
    created_at: datetime
    revoked_at: datetime | None = None
