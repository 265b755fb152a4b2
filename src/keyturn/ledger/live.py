"""The ledger of a live database: pages of events, checkpoints, proofs, export and verification.

Everything that reads the ledger from a `Store` (rather than from an exported bundle) is here, for the
auditor API, the `keyturn ledger` commands and the checkpointer alike. Proofs come from a `LiveTree`,
which reads only the leaf hashes it has not seen yet, so a proof never rehashes the log.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyturn.errors import NotFound, ServiceError
from keyturn.ledger.merkle import MerkleTree, ProofError
from keyturn.ledger.note import NoteError, SignedCheckpoint, VerifierKey
from keyturn.ledger.prove import inclusion_document
from keyturn.ledger.verify import CheckpointSource, LeafEntry, VerifyResult

if TYPE_CHECKING:
    from keyturn.store import Store, StoredCheckpoint, StoredEvent

SCAN_LIMIT = 20_000  # events examined per page when filtering by type or time


class LiveTree:
    """The Merkle tree of a store's ledger, kept up to date incrementally. Thread-safe."""

    def __init__(self) -> None:
        self._tree = MerkleTree()
        self._lock = threading.Lock()

    def sync(self, store: Store, page: int = 50_000) -> MerkleTree:
        with self._lock:
            while True:
                hashes = store.leaf_hashes(after_seq=self._tree.size - 1, limit=page)
                self._tree.extend(hashes)
                if len(hashes) < page:
                    return self._tree

    @property
    def lock(self) -> threading.Lock:
        return self._lock


def covering_checkpoint(checkpoints: Sequence[StoredCheckpoint], seq: int) -> StoredCheckpoint | None:
    """The first checkpoint that covers event `seq` (checkpoints sorted by size), or None yet."""
    at = bisect.bisect_right([c.size for c in checkpoints], seq)
    return checkpoints[at] if at < len(checkpoints) else None


def store_entries(store: Store, page: int = 5000) -> Iterator[LeafEntry]:
    after = -1
    while True:
        batch = store.events(after_seq=after, limit=page)
        for event in batch:
            yield LeafEntry(
                event.leaf_bytes(), bytes.fromhex(event.leaf_hash), f"database event seq {event.seq}"
            )
        if len(batch) < page:
            return
        after = batch[-1].seq


def log_origin(store: Store, configured: str | None) -> str | None:
    """The origin the log's checkpoints carry: the configured one when a configuration is given; with only a
    database, the one the stored checkpoints were signed with (a default from nowhere would make a genuine
    log look like another log's)."""
    if configured is not None:
        return configured
    stored = store.checkpoints()
    return stored[-1].note.split("\n", 1)[0] if stored else None


def verify_store(
    store: Store, external: list[CheckpointSource], trusted: list[VerifierKey], origin: str | None = None
) -> VerifyResult:
    from keyturn.ledger.verify import Problem, verify_log

    try:
        keys = trusted or [VerifierKey.parse(k.public_key) for k in store.ledger_keys()]
    except NoteError as exc:
        return VerifyResult(origin=origin, problem=Problem("bad_key", f"ledger_keys: {exc}"))
    internal = [CheckpointSource(c.note, f"database checkpoint {c.size}") for c in store.checkpoints()]
    return verify_log(
        store_entries(store), [*internal, *external], keys, origin=origin, pinned_keys=bool(trusted)
    )


class LiveLedger:
    """The auditor's view of one store's ledger. Errors are `keyturn.errors` values naming the field."""

    def __init__(self, store: Store, origin: str | None, tree: LiveTree | None = None) -> None:
        self.store = store
        self.origin = origin  # None: the origin the stored checkpoints carry (a bare database, no config)
        self.tree = tree or LiveTree()

    def events(
        self,
        *,
        after_seq: int = -1,
        limit: int = 100,
        request_id: str | None = None,
        type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise ServiceError(f"{name}: the time needs a timezone offset", {"field": f"query.{name}"})
        store = self.store
        checkpoints = store.checkpoints()
        scanned_to: int | None
        if request_id is not None:
            rows = [e for e in store.events_for_request(request_id) if e.seq > after_seq]
            scanned_to = None
        else:
            rows, scanned_to, cursor = [], after_seq, after_seq
            while len(rows) < limit and cursor - after_seq < SCAN_LIMIT:
                batch = store.events(after_seq=cursor, limit=1000)
                if not batch:
                    break
                for event in batch:
                    scanned_to = event.seq
                    if _matches(event, type, since, until):
                        rows.append(event)
                        if len(rows) == limit:
                            break
                cursor = batch[-1].seq
                if len(rows) == limit or len(batch) < 1000:
                    break
        rows = [e for e in rows if _matches(e, type, since, until)][:limit]
        head = store.head_seq()
        more = request_id is None and scanned_to is not None and scanned_to < head
        return {
            "items": [_event_view(e, checkpoints) for e in rows],
            "next_after_seq": scanned_to if more else None,
            "head_seq": head,
        }

    def checkpoints(self) -> dict[str, Any]:
        return {
            "items": [
                {
                    "size": c.size,
                    "root_hash": c.root_hash,
                    "key_name": c.key_name,
                    "created_at": c.created_at.isoformat(),
                    "note": c.note,
                }
                for c in self.store.checkpoints()
            ],
            "keys": [
                {"name": k.name, "verifier_key": k.public_key, "retired_at": k.retired_at}
                for k in self.store.ledger_keys()
            ],
        }

    def inclusion(self, seq: int, size: int | None = None) -> dict[str, Any]:
        """Inclusion proof of event `seq` against the checkpoint of `size` (default: the newest one)."""
        store = self.store
        stored = store.checkpoints()
        if size is None:
            chosen = stored[-1] if stored and stored[-1].size > seq else None
        else:
            chosen = next((c for c in stored if c.size == size), None)
            if chosen is None:
                raise NotFound(f"no signed checkpoint of size {size}", {"field": "query.size"})
        if chosen is None or chosen.size <= seq:
            raise NotFound(f"no signed checkpoint covers seq {seq} yet", {"field": "query.seq"})
        found = store.events(after_seq=seq - 1, limit=1)
        if not found or found[0].seq != seq:
            raise NotFound(f"no event with seq {seq}", {"field": "query.seq"})
        tree = self.tree.sync(store)
        names = {s.name for s in SignedCheckpoint.parse(chosen.note).note.signatures}
        key = next((k.public_key for k in store.ledger_keys() if k.name in names), None)
        return inclusion_document(found[0].leaf_bytes(), seq, tree, chosen.note, key)

    def consistency(self, from_size: int, to_size: int) -> dict[str, Any]:
        tree = self.tree.sync(self.store)
        try:
            proof = tree.consistency_proof(from_size, to_size)
            roots = tree.root(from_size), tree.root(to_size)
        except ProofError as exc:
            raise ServiceError(str(exc), {"field": "query.to"}) from exc
        return {
            "from": from_size,
            "to": to_size,
            "from_root": roots[0].hex(),
            "to_root": roots[1].hex(),
            "proof": [h.hex() for h in proof],
        }

    def export(
        self, out: Path, *, fallback_origin: str, from_seq: int = 0, to_seq: int | None = None
    ) -> dict[str, Any]:
        """Write a self-contained bundle (events JSONL, checkpoints, public keys, manifest) to `out`.
        `fallback_origin` names a log that has no checkpoint yet."""
        from keyturn.ledger.bundle import export_store

        try:
            return export_store(
                self.store,
                out,
                origin=log_origin(self.store, self.origin) or fallback_origin,
                from_seq=from_seq,
                to_seq=to_seq,
            )
        except ValueError as exc:
            raise ServiceError(str(exc), {"field": "from"}) from exc

    def verify(self, external: list[CheckpointSource], trusted: list[VerifierKey]) -> VerifyResult:
        return verify_store(self.store, external, trusted, origin=log_origin(self.store, self.origin))


def _matches(event: StoredEvent, type: str | None, since: datetime | None, until: datetime | None) -> bool:
    return (
        (type is None or event.type == type)
        and (since is None or event.ts >= since)
        and (until is None or event.ts < until)
    )


def _event_view(event: StoredEvent, checkpoints: list[StoredCheckpoint]) -> dict[str, Any]:
    covering = covering_checkpoint(checkpoints, event.seq)
    return {
        "seq": event.seq,
        "ts": event.ts.isoformat(),
        "type": event.type,
        "actor": event.actor,
        "request_id": event.request_id,
        "payload": event.payload,
        "leaf_hash": event.leaf_hash,
        # The key that signed the first checkpoint covering this event (null until one does).
        "checkpoint": {"size": covering.size, "key": covering.key_name} if covering else None,
    }
