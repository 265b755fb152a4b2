"""The ledger for auditors: events, checkpoints, inclusion and consistency proofs, export bundles.

Every endpoint requires the `auditor` role (the service checks it: `Keyturn.ledger`); the ledger reads
themselves are `keyturn.ledger.live.LiveLedger`'s.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query
from fastapi.responses import Response

from keyturn.server.deps import Auditor, Service

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])

_MAX_SEQ = 2**62  # sequence numbers are 64-bit integers in the database: larger ones are a 422, not a 500


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
    return svc.ledger(who).events(
        after_seq=after_seq, limit=limit, request_id=request_id, type=type, since=since, until=until
    )


@router.get("/checkpoints", summary="Signed checkpoints (C2SP notes), oldest first")
def checkpoints(who: Auditor, svc: Service) -> dict[str, Any]:
    return svc.ledger(who).checkpoints()


@router.get("/proof/inclusion", summary="Inclusion proof of one event against a signed checkpoint")
def inclusion(
    who: Auditor,
    svc: Service,
    seq: Annotated[int, Query(ge=0, le=_MAX_SEQ)],
    size: Annotated[
        int | None, Query(ge=1, le=_MAX_SEQ, description="checkpoint size (default: the newest)")
    ] = None,
) -> dict[str, Any]:
    return svc.ledger(who).inclusion(seq, size)


@router.get("/proof/consistency", summary="Consistency proof between two tree sizes")
def consistency(
    who: Auditor,
    svc: Service,
    from_size: Annotated[int, Query(alias="from", ge=0, le=_MAX_SEQ)],
    to_size: Annotated[int, Query(alias="to", ge=0, le=_MAX_SEQ)],
) -> dict[str, Any]:
    return svc.ledger(who).consistency(from_size, to_size)


@router.get("/export", summary="The whole ledger as a verifiable bundle (tar.gz)")
async def export(who: Auditor, svc: Service) -> Response:
    ledger = svc.ledger(who)

    def build() -> bytes:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "ledger-bundle"
            ledger.export(root, fallback_origin=svc.settings.ledger.origin)
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
