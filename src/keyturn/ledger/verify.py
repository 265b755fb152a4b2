"""Offline verification of a ledger: leaves, tree, checkpoint signatures, consistency with checkpoints
held elsewhere.

Imports only the standard library, `cryptography` (via `note`) and the two sibling modules, so an auditor
can run it from a plain install with no database, server or configuration. The input is a stream of
`LeafEntry` (the exact leaf bytes, and the leaf hash the server recorded when it appended the event) plus
signed checkpoints; `keyturn.ledger.bundle` reads them from an exported bundle, and the `keyturn ledger
verify --database` command from a live database.

Checks, in log order (the first failure is reported, with what is wrong and where):
1. each event's `seq` equals its position (a deleted, inserted or reordered event shows here);
2. each event's leaf hash, recomputed from its bytes, equals the recorded one (a changed payload shows here);
3. at each checkpoint's size: its signature by a trusted key, its origin, and its root hash against the
   tree recomputed from the events (a rewrite that also recomputed the recorded hashes shows here);
4. checkpoints held elsewhere (`--checkpoint FILE`): the same, which is what exposes a log that was
   truncated or rewritten and re-signed with a stolen key — the rewritten history cannot reproduce a root
   that a witness kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from keyturn.ledger.merkle import HASH_SIZE, CompactRange, hash_leaf
from keyturn.ledger.note import NoteError, SignatureError, SignedCheckpoint, VerifierKey
from keyturn.ledger.passkey_registry import REGISTERED, REVOKED, RegisteredPasskeys


@dataclass(frozen=True)
class LeafEntry:
    leaf: bytes  # the canonical JSON the Merkle leaf commits to
    recorded_hash: bytes | None  # the leaf hash stored when the event was appended, if known
    location: str  # "events.jsonl:12" or "database seq 11", for messages


@dataclass(frozen=True)
class CheckedRun:
    """Consecutive events a producer already checked exactly as `verify_log` checks a `LeafEntry` (each seq
    equals its position, each recomputed leaf hash equals the recorded one), given by their leaf hashes:
    32 bytes each, concatenated. A producer hands over any event it could not check this way as a
    `LeafEntry`, so problems are still found and named by `verify_log` itself, in log order.
    """

    hashes: bytes

    def __len__(self) -> int:
        return len(self.hashes) // HASH_SIZE


@dataclass(frozen=True)
class CheckpointSource:
    raw: str
    location: str  # "checkpoints/12.note", "database checkpoint 12", or the external file name
    external: bool = False


@dataclass(frozen=True)
class Problem:
    """What is wrong, and where. `code` is stable for programs; `message` is for people."""

    code: str
    message: str
    seq: int | None = None
    size: int | None = None
    location: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "seq": self.seq,
            "size": self.size,
            "location": self.location,
        }


@dataclass
class VerifyResult:
    origin: str | None
    events: int = 0
    first_seq: int = 0
    checkpoints: int = 0
    external: int = 0
    covered: int = 0  # the largest tree size covered by a verified signed checkpoint
    root: str = ""  # hex root over every event seen
    keys_used: list[str] = field(default_factory=list)
    pinned_keys: bool = False
    problem: Problem | None = None
    passkey_signatures: int = 0  # passkey-signed reviews whose signatures were checked

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"FAILED: {self.problem.message}"
        uncovered = self.first_seq + self.events - self.covered
        tail = f"; {uncovered} newest events not yet covered by a checkpoint" if uncovered > 0 else ""
        trust = "pinned key" if self.pinned_keys else "keys shipped with the log"
        return (
            f"OK: {_count(self.events, 'event')}, {_count(self.checkpoints, 'checkpoint')} and "
            f"{_count(self.external, 'external checkpoint')} verified "
            f"(signed by {', '.join(self.keys_used) or 'nobody'}; {trust}); "
            f"tree size {self.first_seq + self.events}, root {self.root}{tail}"
            + (
                f"; {_count(self.passkey_signatures, 'passkey signature')} verified"
                if self.passkey_signatures
                else ""
            )
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "origin": self.origin,
            "events": self.events,
            "first_seq": self.first_seq,
            "checkpoints": self.checkpoints,
            "external_checkpoints": self.external,
            "covered": self.covered,
            "root": self.root,
            "keys_used": self.keys_used,
            "pinned_keys": self.pinned_keys,
            "problem": self.problem.as_dict() if self.problem else None,
            "passkey_signatures": self.passkey_signatures,
        }


class _Failed(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def leaf_seq(leaf: bytes) -> int:
    """The top-level `seq` of a canonical leaf, without parsing it.

    In RFC 8785 output the top-level keys are sorted (actor, payload, request_id, seq, ts, type), and every
    later value is a string whose quotes are escaped, so the last `,"seq":` is the top-level one.
    """
    at = leaf.rfind(b',"seq":')
    if at >= 0:
        end = leaf.find(b",", at + 7)
        digits = leaf[at + 7 : end]
        if digits.isdigit():
            return int(digits)
    value = json.loads(leaf)
    seq = value.get("seq") if isinstance(value, dict) else None
    if not isinstance(seq, int):
        raise ValueError("the event has no integer seq")
    return seq


def verify_log(
    entries: Iterable[LeafEntry | CheckedRun],
    checkpoints: Sequence[CheckpointSource],
    keys: Sequence[VerifierKey],
    *,
    origin: str | None = None,
    pinned_keys: bool = False,
    start: CompactRange | None = None,
) -> VerifyResult:
    """Verify a log (or a slice of it starting at `start.size`, whose frontier is `start`)."""
    frontier = start or CompactRange()
    first = frontier.size
    result = VerifyResult(origin=origin, first_seq=first, pinned_keys=pinned_keys)
    used: dict[str, None] = {}
    registered = RegisteredPasskeys(complete=first == 0)
    try:
        parsed = _parse_checkpoints(checkpoints, result)
        if origin is None and parsed:
            result.origin = origin = parsed[0][0].checkpoint.origin
        pending = sorted((c for c in parsed if c[0].size > first), key=lambda c: (c[0].size, c[1].external))
        for cp, source in (c for c in parsed if c[0].size <= first):
            if source.external:
                _fail(
                    "checkpoint_not_covered",
                    f"{source.location}: checkpoint of size {cp.size} predates this slice of the log "
                    f"(which starts at seq {first}); export from seq 0 to check it",
                    size=cp.size,
                    location=source.location,
                )
        position = 0
        for entry in entries:
            if entry.__class__ is CheckedRun:
                assert isinstance(entry, CheckedRun)
                hashes = memoryview(entry.hashes)
                while hashes:
                    # Up to the next checkpoint's size at most, so each is checked at its exact size.
                    room = (pending[0][0].size - frontier.size) * HASH_SIZE if pending else len(hashes)
                    frontier.extend_packed(hashes[:room])
                    position += len(hashes[:room]) // HASH_SIZE
                    hashes = hashes[room:]
                    while pending and pending[0][0].size == frontier.size:
                        cp, source = pending.pop(0)
                        _check_checkpoint(cp, source, frontier.root(), keys, origin, first, result, used)
                continue
            assert isinstance(entry, LeafEntry)
            seq = first + position
            try:
                actual = leaf_seq(entry.leaf)
            except ValueError as exc:
                _fail(
                    "bad_event", f"{entry.location}: not an event ({exc})", seq=seq, location=entry.location
                )
            if actual != seq:
                _fail(
                    "seq_mismatch",
                    f"{entry.location}: expected the event with seq {seq} but found seq {actual} "
                    "(an event was deleted, inserted or moved here)",
                    seq=seq,
                    location=entry.location,
                )
            if b'"passkey"' in entry.leaf:
                _check_passkey(entry, seq, result, registered)  # first: a changed assertion is named as such
            computed = hash_leaf(entry.leaf)
            if entry.recorded_hash is not None and computed != entry.recorded_hash:
                _fail(
                    "leaf_hash_mismatch",
                    f"event seq {seq} ({entry.location}): its content does not match the leaf hash recorded "
                    "when it was appended (the event was changed afterwards)",
                    seq=seq,
                    location=entry.location,
                )
            frontier.append(computed)
            position += 1
            while pending and pending[0][0].size == frontier.size:
                cp, source = pending.pop(0)
                _check_checkpoint(cp, source, frontier.root(), keys, origin, first, result, used)
        result.events = position
        result.root = frontier.root().hex()
        for cp, source in pending:
            where = "held elsewhere " if source.external else ""
            _fail(
                "truncated",
                f"{source.location}: the checkpoint {where}covers {cp.size} events but the log has only "
                f"{frontier.size} (events were removed from the end)",
                size=cp.size,
                location=source.location,
            )
    except _Failed as failed:
        result.problem = failed.problem
    result.keys_used = list(used)
    return result


def _check_passkey(entry: LeafEntry, seq: int, result: VerifyResult, registered: RegisteredPasskeys) -> None:
    """A passkey-signed review: its signature must prove the review the event records (offline), with the
    key the log registered for its reviewer. Registrations and revocations are read in log order."""
    try:
        event = json.loads(entry.leaf)
    except ValueError:
        return  # not JSON: the leaf checks above name it
    kind = event.get("type") if isinstance(event, dict) else None
    if kind in (REGISTERED, REVOKED):
        problem = registered.read(event, seq)
        if problem is not None:
            _fail(
                "bad_passkey_registration",
                f"event seq {seq} ({entry.location}): {problem}",
                seq=seq,
                location=entry.location,
            )
        return
    if kind != "request.reviewed":
        return
    payload = event.get("payload")
    if not isinstance(payload, dict) or "passkey" not in payload:
        return
    # Imported here: a log without passkey reviews verifies with the standard library and cryptography only.
    from keyturn import passkeys

    problem = passkeys.recorded_problem(event) or registered.review_problem(event)
    if problem is not None:
        _fail(
            "bad_passkey_signature",
            f"event seq {seq} ({entry.location}): the passkey signature of {payload.get('reviewer')} "
            f"does not prove this review: {problem}",
            seq=seq,
            location=entry.location,
        )
    result.passkey_signatures += 1


def _fail(code: str, message: str, **where: Any) -> Any:
    raise _Failed(Problem(code, message, **where))


def _parse_checkpoints(
    sources: Sequence[CheckpointSource], result: VerifyResult
) -> list[tuple[SignedCheckpoint, CheckpointSource]]:
    parsed = []
    for source in sources:
        try:
            parsed.append((SignedCheckpoint.parse(source.raw), source))
        except NoteError as exc:
            _fail(
                "bad_checkpoint",
                f"{source.location}: not a signed checkpoint ({exc})",
                location=source.location,
            )
    return parsed


def _check_checkpoint(
    cp: SignedCheckpoint,
    source: CheckpointSource,
    root: bytes,
    keys: Sequence[VerifierKey],
    origin: str | None,
    first: int,
    result: VerifyResult,
    used: dict[str, None],
) -> None:
    where = "held elsewhere " if source.external else ""
    try:
        key = cp.verify(keys)
    except SignatureError as exc:
        _fail(
            exc.code,
            f"{source.location}: checkpoint {where}of size {cp.size}: {exc}",
            size=cp.size,
            location=source.location,
        )
    if origin is not None and cp.checkpoint.origin != origin:
        _fail(
            "wrong_origin",
            f"{source.location}: checkpoint of size {cp.size} is for log {cp.checkpoint.origin!r}, "
            f"not {origin!r}",
            size=cp.size,
            location=source.location,
        )
    if cp.root != root:
        if source.external:
            message = (
                f"{source.location}: the log is inconsistent with the checkpoint held elsewhere: at size "
                f"{cp.size} its root is {root.hex()}, the witnessed root is {cp.root.hex()} "
                "(the history up to "
                "there was rewritten)"
            )
            _fail("inconsistent", message, size=cp.size, location=source.location)
        _fail(
            "root_mismatch",
            f"{source.location}: the events with seq {max(first, result.covered)} to {cp.size - 1} do not "
            f"produce the signed root of checkpoint {cp.size} (an event in that range was changed, removed "
            "or reordered)",
            size=cp.size,
            location=source.location,
        )
    used[key.id] = None
    if source.external:
        result.external += 1
    else:
        result.checkpoints += 1
    result.covered = max(result.covered, cp.size)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
