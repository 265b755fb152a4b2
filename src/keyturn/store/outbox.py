"""The durable outbox: one row per channel delivery, written in the transaction of the transition causing it.

`Store.insert_request` / `Store.apply` ask the store's `planner` (a pure function of the transition,
`keyturn.channels.plan`) which rows a transition makes and write them with the transition, so a crash or
a channel outage loses nothing and a rolled-back transition notifies no one. The dispatcher
(`keyturn.channels.dispatcher`) takes rows from here:

- `claim` leases due rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the write lock on SQLite), the head
  row of each (request, target) only, so an update never overtakes its post; a replica that dies
  mid-delivery lets its rows go when the lease ends.
- `finish` records what happened (done, retry at a time, dead with the last error, a message reference).
- `list_rows`, `retry`, `retry_dead`: `keyturn outbox list|retry`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, exists, func, insert, select, update
from sqlalchemy.orm import aliased

from keyturn.model import RequestRecord
from keyturn.store.schema import UtcDateTime, channel_targets, message_refs, outbox, requests

if TYPE_CHECKING:
    from keyturn import workflow
    from keyturn.store.store import Store

PENDING = "pending"
DONE = "done"
DEAD = "dead"
CANCELLED = "cancelled"
STATUSES = (PENDING, DONE, DEAD, CANCELLED)

ESCALATE = "escalate"  # the kind of a scheduled escalation row (keyturn.channels.base.DeliveryKind)


@dataclass(frozen=True)
class PlannedRow:
    """One delivery a transition causes (built by `keyturn.channels.plan`, written by the store)."""

    id: str  # the idempotency key (deterministic: the same transition always plans the same ids)
    kind: str
    target: str
    event_type: str
    due_at: datetime
    payload: dict[str, Any] | None = None


@dataclass(frozen=True)
class Plan:
    rows: tuple[PlannedRow, ...] = ()
    cancel_escalations: bool = False  # the transition resolves the request: unsent escalations are void

    def __bool__(self) -> bool:
        return bool(self.rows) or self.cancel_escalations


Planner = Callable[["workflow.Transition"], Plan]


@dataclass(frozen=True)
class StoredRef:
    target: str
    conversation: str
    message_id: str
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    id: str
    request_id: str
    kind: str
    target: str
    event_type: str
    status: str
    scheduled_at: datetime
    due_at: datetime
    attempts: int
    last_error: str | None
    payload: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Claimed:
    """A leased row with what its delivery needs: the request as it is now and the message posted before."""

    row: OutboxRow
    record: RequestRecord
    ref: StoredRef | None
    disabled: str | None  # why the target is switched off, if it is


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed delivery."""

    seq: int
    status: str  # DONE, PENDING (retry at `due_at`), DEAD or CANCELLED
    attempts: int
    due_at: datetime | None = None
    error: str | None = None
    ref: StoredRef | None = None  # a message posted: remember it for later updates
    request_id: str = ""


def write_plan(conn: Connection, plan: Plan, request_id: str, now: datetime) -> None:
    """Inside the transition's own transaction (called by the store)."""
    if plan.cancel_escalations:
        conn.execute(
            update(outbox)
            .where(outbox.c.request_id == request_id, outbox.c.kind == ESCALATE, outbox.c.status == PENDING)
            .values(status=CANCELLED, last_error="the request was resolved first", updated_at=now)
        )
    if plan.rows:
        conn.execute(
            insert(outbox),
            [
                {
                    "id": row.id,
                    "request_id": request_id,
                    "kind": row.kind,
                    "target": row.target,
                    "event_type": row.event_type,
                    "status": PENDING,
                    "scheduled_at": row.due_at,
                    "due_at": row.due_at,
                    "attempts": 0,
                    "payload": None if row.payload is None else _dump(row.payload),
                    "created_at": now,
                    "updated_at": now,
                }
                for row in plan.rows
            ],
        )


class Outbox:
    """The dispatcher's and the CLI's access to the outbox tables."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # --- the dispatcher ---------------------------------------------------------------------------

    def claim(self, now: datetime, limit: int, owner: str, lease_until: datetime) -> list[Claimed]:
        """Lease up to `limit` due rows, at most one per (request, target): the earliest not yet finished."""
        query = (
            select(outbox)
            .where(
                outbox.c.status == PENDING,
                outbox.c.due_at <= now,
                (outbox.c.leased_until.is_(None)) | (outbox.c.leased_until < now),
                _NOT_BLOCKED,
            )
            .order_by(outbox.c.due_at, outbox.c.seq)
            .limit(limit)
        )
        if self._store.backend == "postgresql":
            query = query.with_for_update(of=outbox, skip_locked=True)
        else:
            # SQLite has one write lock for the whole database: look before taking it, so that a wake-up
            # with nothing due (most of them) never makes a submit wait.
            with self._store._read() as conn:
                if conn.execute(query.with_only_columns(outbox.c.seq).limit(1)).first() is None:
                    return []
        with self._store._write() as tx:
            rows = [_row(r) for r in tx.conn.execute(query).all()]
            if not rows:
                return []
            seqs = [r.seq for r in rows]
            tx.conn.execute(
                update(outbox)
                .where(outbox.c.seq.in_(seqs))
                .values(leased_by=owner, leased_until=lease_until, updated_at=now)
            )
            request_ids = sorted({r.request_id for r in rows})
            records = {
                rid: RequestRecord.model_validate_json(doc)
                for rid, doc in tx.conn.execute(
                    select(requests.c.id, requests.c.record).where(requests.c.id.in_(request_ids))
                ).all()
            }
            refs = {
                (ref.request_id, ref.target): StoredRef(
                    ref.target, ref.conversation, ref.message_id, json.loads(ref.extra)
                )
                for ref in tx.conn.execute(
                    select(message_refs).where(message_refs.c.request_id.in_(request_ids))
                ).all()
            }
            targets = sorted({r.target for r in rows})
            disabled = dict(
                tx.conn.execute(
                    select(channel_targets.c.target, channel_targets.c.reason).where(
                        channel_targets.c.target.in_(targets)
                    )
                ).all()
            )
        return [
            Claimed(r, records[r.request_id], refs.get((r.request_id, r.target)), disabled.get(r.target))
            for r in rows
        ]

    def finish(self, outcomes: Sequence[Outcome], owner: str, now: datetime) -> int:
        """Record outcomes of rows this owner leased; returns how many still were its to record.

        A row cancelled meanwhile (the request resolved while its escalation was in flight) stays
        cancelled; a row whose lease ran out and that another replica took is left to that replica.
        """
        if not outcomes:
            return 0
        recorded = 0
        with self._store._write() as tx:
            for outcome in outcomes:
                result = tx.conn.execute(
                    update(outbox)
                    .where(
                        outbox.c.seq == outcome.seq,
                        outbox.c.status == PENDING,
                        outbox.c.leased_by == owner,
                    )
                    .values(
                        status=outcome.status,
                        attempts=outcome.attempts,
                        due_at=outcome.due_at if outcome.due_at is not None else outbox.c.due_at,
                        last_error=outcome.error,
                        leased_by=None,
                        leased_until=None,
                        updated_at=now,
                    )
                )
                recorded += result.rowcount
                if outcome.ref is not None:
                    self._save_ref(tx.conn, outcome.request_id, outcome.ref, now)
        return recorded

    def release(self, seqs: Sequence[int], owner: str, now: datetime) -> None:
        """Give back leased rows this owner will not finish (a clean shutdown): due again at once."""
        if not seqs:
            return
        with self._store._write() as tx:
            tx.conn.execute(
                update(outbox)
                .where(outbox.c.seq.in_(list(seqs)), outbox.c.status == PENDING, outbox.c.leased_by == owner)
                .values(leased_by=None, leased_until=None, updated_at=now)
            )

    def _save_ref(self, conn: Connection, request_id: str, ref: StoredRef, now: datetime) -> None:
        conn.execute(
            delete(message_refs).where(
                message_refs.c.request_id == request_id, message_refs.c.target == ref.target
            )
        )
        conn.execute(
            insert(message_refs).values(
                request_id=request_id,
                target=ref.target,
                conversation=ref.conversation,
                message_id=ref.message_id,
                extra=_dump(dict(ref.extra)),
                created_at=now,
            )
        )

    def ref(self, request_id: str, target: str) -> StoredRef | None:
        with self._store._read() as conn:
            row = conn.execute(
                select(message_refs).where(
                    message_refs.c.request_id == request_id, message_refs.c.target == target
                )
            ).first()
        return (
            None
            if row is None
            else StoredRef(row.target, row.conversation, row.message_id, json.loads(row.extra))
        )

    def next_due(self) -> datetime | None:
        """When the earliest pending row comes due (or its lease ends), for the dispatcher's sleep."""
        with self._store._read() as conn:
            due: datetime | None = conn.execute(_NEXT_DUE).scalar()
        return due

    def due_stats(self, now: datetime) -> tuple[int, datetime | None]:
        """How many rows are due now, and when the oldest of them came due (Prometheus gauges)."""
        with self._store._read() as conn:
            row = conn.execute(
                select(func.count(), func.min(outbox.c.scheduled_at, type_=UtcDateTime())).where(
                    outbox.c.status == PENDING, outbox.c.due_at <= now
                )
            ).one()
        return int(row[0]), row[1]

    # --- admin: keyturn outbox list|retry, keyturn channels enable ---------------------------------

    def list_rows(
        self, *, status: str | None = None, request_id: str | None = None, limit: int = 100
    ) -> list[OutboxRow]:
        query = select(outbox).order_by(outbox.c.seq.desc()).limit(limit)
        if status is not None:
            query = query.where(outbox.c.status == status)
        if request_id is not None:
            query = query.where(outbox.c.request_id == request_id)
        with self._store._read() as conn:
            return [_row(r) for r in conn.execute(query).all()]

    def get(self, row_id: str) -> OutboxRow | None:
        with self._store._read() as conn:
            row = conn.execute(select(outbox).where(outbox.c.id == row_id)).first()
        return None if row is None else _row(row)

    def retry(self, row_ids: Sequence[str], now: datetime) -> int:
        """Make dead (or cancelled) rows due again now, with a fresh count of attempts. Same ids: a receiver
        that saw an earlier attempt recognises the replay."""
        if not row_ids:
            return 0
        with self._store._write() as tx:
            result = tx.conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(list(row_ids)), outbox.c.status.in_((DEAD, CANCELLED)))
                .values(
                    status=PENDING, attempts=0, due_at=now, leased_by=None, leased_until=None, updated_at=now
                )
            )
            if result.rowcount:
                # wake every dispatcher: the feed is how they hear that something became due
                tx.changed.update(
                    tx.conn.execute(select(outbox.c.request_id).where(outbox.c.id.in_(list(row_ids))))
                    .scalars()
                    .all()
                )
        return int(result.rowcount)

    def retry_dead(self, now: datetime) -> int:
        with self._store._read() as conn:
            ids = conn.execute(select(outbox.c.id).where(outbox.c.status == DEAD)).scalars().all()
        return self.retry(list(ids), now)

    def disable_target(self, target: str, reason: str, now: datetime) -> None:
        with self._store._write() as tx:
            tx.conn.execute(delete(channel_targets).where(channel_targets.c.target == target))
            tx.conn.execute(insert(channel_targets).values(target=target, disabled_at=now, reason=reason))

    def enable_target(self, target: str) -> bool:
        with self._store._write() as tx:
            result = tx.conn.execute(delete(channel_targets).where(channel_targets.c.target == target))
        return bool(result.rowcount)

    def disabled_targets(self) -> dict[str, tuple[datetime, str]]:
        with self._store._read() as conn:
            rows = conn.execute(select(channel_targets)).all()
        return {r.target: (r.disabled_at, r.reason) for r in rows}

    def count_by_status(self) -> dict[str, int]:
        with self._store._read() as conn:
            rows = conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status)).all()
        return {status: int(n) for status, n in rows}


def _blocked() -> Any:
    """An earlier row of the same (request, target) is not finished: this one must wait for it."""
    earlier = aliased(outbox)
    return exists().where(
        earlier.c.request_id == outbox.c.request_id,
        earlier.c.target == outbox.c.target,
        earlier.c.seq < outbox.c.seq,
        earlier.c.status == PENDING,
        # a scheduled escalation waits for its time without holding back what comes before it
        earlier.c.scheduled_at <= outbox.c.scheduled_at,
    )


# Built once: the dispatcher runs `claim` and `next_due` after every commit, and building the aliased
# table per call (its columns, their proxies) was a visible share of an allowed submit's CPU (issue #12).
_NOT_BLOCKED = ~_blocked()
_NEXT_DUE = select(
    func.min(func.coalesce(outbox.c.leased_until, outbox.c.due_at), type_=UtcDateTime())
).where(outbox.c.status == PENDING, _NOT_BLOCKED)


def _row(r: Any) -> OutboxRow:
    return OutboxRow(
        seq=r.seq,
        id=r.id,
        request_id=r.request_id,
        kind=r.kind,
        target=r.target,
        event_type=r.event_type,
        status=r.status,
        scheduled_at=r.scheduled_at,
        due_at=r.due_at,
        attempts=r.attempts,
        last_error=r.last_error,
        payload=None if r.payload is None else json.loads(r.payload),
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


__all__ = [
    "CANCELLED",
    "DEAD",
    "DONE",
    "PENDING",
    "Claimed",
    "Outbox",
    "OutboxRow",
    "Outcome",
    "Plan",
    "PlannedRow",
    "Planner",
    "StoredRef",
    "write_plan",
]
