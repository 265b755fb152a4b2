"""The ledger for auditors: events, checkpoints, inclusion and consistency proofs, export bundles.

Every endpoint requires the `auditor` role. Proofs come from the app's `LiveTree` (started with the
checkpointer), which reads only the leaf hashes it has not seen yet, so a proof never rehashes the log.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from keyturn.ledger.checkpointer import LiveTree, covering_checkpoint
from keyturn.ledger.merkle import MerkleTree, ProofError
from keyturn.ledger.note import SignedCheckpoint
from keyturn.ledger.prove import inclusion_document
from keyturn.server.deps import Auditor, Service
from keyturn.service import NotFound, ServiceError
from keyturn.store import Store, StoredCheckpoint, StoredEvent

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])

_SCAN_LIMIT = 20_000  # events examined per page when filtering by type or time
_MAX_SEQ = 2**62  # sequence numbers are 64-bit integers in the database: larger ones are a 422, not a 500


def _tree(request: Request, store: Store) -> MerkleTree:
    live: LiveTree | None = getattr(request.app.state, "ledger_tree", None)
    if live is None:
        live = request.app.state.ledger_tree = LiveTree()
    return live.sync(store)


def _origin(request: Request, svc: Any) -> str:
    settings = getattr(svc, "settings", None)
    ledger = getattr(settings, "ledger", None)
    return str(getattr(ledger, "origin", "keyturn.local/ledger"))


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


@router.get("/events", summary="Ledger events, oldest first, paged by seq")
def events(
    who: Auditor,
    svc: Service,
    after_seq: Annotated[int, Query(ge=-1, le=_MAX_SEQ, description="return events after this seq")] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    request_id: Annotated[str | None, Query(description="only the events of this request")] = None,
    type: Annotated[str | None, Query(description="only events of this type, e.g. request.approved")] = None,
    since: Annotated[datetime | None, Query(description="only events at or after this time")] = None,
    until: Annotated[datetime | None, Query(description="only events before this time")] = None,
) -> dict[str, Any]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ServiceError(f"{name}: the time needs a timezone offset", {"field": f"query.{name}"})
    store = svc.store
    checkpoints = store.checkpoints()
    if request_id is not None:
        rows = [e for e in store.events_for_request(request_id) if e.seq > after_seq]
        scanned_to = None
    else:
        rows, scanned_to, cursor = [], after_seq, after_seq
        while len(rows) < limit and cursor - after_seq < _SCAN_LIMIT:
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
    more = request_id is None and scanned_to is not None and scanned_to < store.head_seq()
    return {
        "items": [_event_view(e, checkpoints) for e in rows],
        "next_after_seq": scanned_to if more else None,
        "head_seq": store.head_seq(),
    }


def _matches(event: StoredEvent, type: str | None, since: datetime | None, until: datetime | None) -> bool:
    return (
        (type is None or event.type == type)
        and (since is None or event.ts >= since)
        and (until is None or event.ts < until)
    )


@router.get("/checkpoints", summary="Signed checkpoints (C2SP notes), oldest first")
def checkpoints(who: Auditor, svc: Service) -> dict[str, Any]:
    return {
        "items": [
            {
                "size": c.size,
                "root_hash": c.root_hash,
                "key_name": c.key_name,
                "created_at": c.created_at.isoformat(),
                "note": c.note,
            }
            for c in svc.store.checkpoints()
        ],
        "keys": [
            {"name": k.name, "verifier_key": k.public_key, "retired_at": k.retired_at}
            for k in svc.store.ledger_keys()
        ],
    }


@router.get("/proof/inclusion", summary="Inclusion proof of one event against a signed checkpoint")
def inclusion(
    request: Request,
    who: Auditor,
    svc: Service,
    seq: Annotated[int, Query(ge=0, le=_MAX_SEQ)],
    size: Annotated[
        int | None, Query(ge=1, le=_MAX_SEQ, description="checkpoint size (default: the newest)")
    ] = None,
) -> dict[str, Any]:
    store = svc.store
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
    tree = _tree(request, store)
    names = {s.name for s in SignedCheckpoint.parse(chosen.note).note.signatures}
    key = next((k.public_key for k in store.ledger_keys() if k.name in names), None)
    return inclusion_document(found[0].leaf_bytes(), seq, tree, chosen.note, key)


@router.get("/proof/consistency", summary="Consistency proof between two tree sizes")
def consistency(
    request: Request,
    who: Auditor,
    svc: Service,
    from_size: Annotated[int, Query(alias="from", ge=0, le=_MAX_SEQ)],
    to_size: Annotated[int, Query(alias="to", ge=0, le=_MAX_SEQ)],
) -> dict[str, Any]:
    tree = _tree(request, svc.store)
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


@router.get("/export", summary="The whole ledger as a verifiable bundle (tar.gz)")
async def export(request: Request, who: Auditor, svc: Service) -> Response:
    from keyturn.ledger.bundle import export_store

    origin = _origin(request, svc)

    def build() -> bytes:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "ledger-bundle"
            export_store(svc.store, root, origin=origin)
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
                archive.add(root, arcname="ledger-bundle")
            return buffer.getvalue()

    data = await to_thread.run_sync(build)
    return Response(
        data,
        media_type="application/gzip",
        headers={"Content-Disposition": 'attachment; filename="ledger-bundle.tar.gz"'},
    )
