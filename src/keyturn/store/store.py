"""`Store`: persistence of requests, grants, ledger events and decision records.

Every write is all or nothing. The writes of a request's life (submit, transition, decision record) are
group-committed (`keyturn.store.commit`): concurrent ones share one transaction, each inside a savepoint of
its own, and each returns only once that transaction has committed; other writes get a transaction each.
A transition (`keyturn.workflow.Transition`) is applied with a conditional update on the request's
version, so of several callers that decided on the same state exactly one succeeds and the others get
`ConcurrentUpdate` and decide again. The ledger events of a transaction are appended at its end, in one
append under a lock on the single `ledger_head` row, so sequence numbers are contiguous across replicas
and the ledger can never disagree with the state.

Lock order, the same in every transaction so none can deadlock: request rows first (insert, conditional
update or `SELECT … FOR UPDATE`; a group-committed batch takes them in request-id order), then
`ledger_head`, which is held only for the final inserts.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import psycopg
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    union,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from keyturn import workflow
from keyturn.model import Event, EventType, RequestRecord, Status
from keyturn.store import migrate
from keyturn.store.commit import Committer, Write
from keyturn.store.engine import BEGIN_MODE, Backend, create, libpq_conninfo, normalise_url
from keyturn.store.errors import (
    ConcurrentUpdate,
    DuplicateIdempotencyKey,
    InvalidCursor,
    NotFound,
    StorageFull,
    StoreError,
    unavailable_from,
)
from keyturn.store.feed import ChangeFeed, PostgresChangeFeed
from keyturn.store.outbox import Planner, write_plan
from keyturn.store.records import (
    DecisionRecord,
    StoredCheckpoint,
    StoredEvent,
    StoredLedgerKey,
    event_leaf,
    leaf_hash,
)
from keyturn.store.schema import (
    checkpoints,
    decision_records,
    events,
    grants,
    ledger_head,
    ledger_keys,
    pending_route_groups,
    request_groups,
    requests,
)

log = logging.getLogger("keyturn.store")

DueHandler = Callable[[RequestRecord], workflow.Transition | None]

T = TypeVar("T")

_IMMUTABLE_COLUMNS = ("id", "action", "resource", "requester", "idempotency_key", "created_at")

# Below this much free space on SQLite's filesystem, readiness reports the disk full.
MIN_FREE_BYTES = 1 << 20

# Timer sweeps: requests per transaction, and how long one sweep may go on before the next tick continues.
DUE_BATCH_SIZE = 200
DUE_TIME_BUDGET = 5.0


class Store:
    def __init__(
        self, engine: Engine, backend: Backend, feed: ChangeFeed, *, group_commit: bool = True
    ) -> None:
        self.engine = engine
        self.backend = backend
        self.feed = feed
        # Which channel deliveries a transition causes (`keyturn.channels.plan`): written in the
        # transition's own transaction. None: nothing is delivered (tools that only read or migrate).
        self.planner: Planner | None = None
        # The writes of a request's life (submit, transition, decision record) share commits with the
        # concurrent ones (`keyturn.store.commit`); None: one transaction each (`store.group_commit: false`).
        self.committer: Committer | None = (
            Committer(self._transaction, self._seal, self.feed.after_commit) if group_commit else None
        )

    @classmethod
    def open(cls, url: str, *, group_commit: bool = True, **engine_options: Any) -> Store:
        """`sqlite:///PATH` or `postgresql://…` (psycopg 3). Does not touch the schema: see `upgrade()`."""
        parsed, backend = normalise_url(url)
        engine = create(parsed, backend, **engine_options)
        feed = PostgresChangeFeed(libpq_conninfo(parsed)) if backend == "postgresql" else ChangeFeed()
        return cls(engine, backend, feed, group_commit=group_commit)

    def upgrade(self) -> None:
        """Migrate the schema to the newest revision (safe when several replicas start at once)."""
        with self._unavailable_on_operational_error():
            migrate.upgrade(self.engine, self.backend)

    def close(self) -> None:
        if self.committer is not None:
            self.committer.close()
        self.feed.close()
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(text("SELECT 1"))

    def probe_write(self) -> None:
        """Raise `StoreUnavailable` (`StorageFull` for a full disk) unless the database takes a write now.

        A real write transaction that changes nothing (the ledger head set to itself: a row lock held for
        a moment), so a read-only, locked or disconnected database is caught, not only a dead one. For
        SQLite, whose file is local, also the free space of its filesystem: a write that happens to fit
        in a page SQLite already has would otherwise hide a full disk.
        """
        if self.backend == "sqlite" and self.engine.url.database:
            folder = Path(self.engine.url.database).resolve().parent
            free = shutil.disk_usage(folder).free
            if free < MIN_FREE_BYTES:
                raise StorageFull(f"the database cannot write, its disk is full ({free} bytes free)")
        with self._write() as tx:
            tx.conn.execute(
                update(ledger_head).where(ledger_head.c.id == 1).values(next_seq=ledger_head.c.next_seq)
            )

    # --- requests -----------------------------------------------------------------------------------

    def insert_request(
        self,
        transition: workflow.Transition,
        decision: DecisionRecord,
        response: dict[str, Any] | None = None,
    ) -> RequestRecord:
        """Store a new request with its groups, grant, events and decision record, all or nothing.

        Raises `DuplicateIdempotencyKey` (writing nothing) when the requester already used its key.
        """
        record = transition.record
        requester = record.request.requester.id
        key = record.request.idempotency_key

        def write(tx: Write) -> None:
            if key is not None:
                self._raise_if_key_used(tx.conn, requester, key)
            tx.conn.execute(
                insert(requests).values(**_request_columns(record), response=_dump_optional(response))
            )
            groups = _route_groups(record)
            if groups:
                tx.conn.execute(
                    insert(request_groups), [{"request_id": record.id, "group": g} for g in groups]
                )
                _index_pending(tx.conn, record, groups)
            self._save_grant(tx.conn, transition)
            tx.conn.execute(insert(decision_records).values(**_decision_columns(decision)))
            self._write_outbox(tx.conn, transition)
            tx.append(transition.events)
            tx.changed.add(record.id)

        try:
            self._commit(write, record.id)
        except IntegrityError as exc:
            # Two submits with one key raced (PostgreSQL): the later INSERT waited for the earlier commit
            # and then hit the unique constraint. Answer it like the sequential case.
            if key is not None:
                with self._read() as conn:
                    self._raise_if_key_used(conn, requester, key)
            raise StoreError(f"request {record.id} could not be stored: {exc.orig}") from exc
        return record

    def apply(self, transition: workflow.Transition, expected_version: int) -> RequestRecord:
        """Persist a transition of a stored request, if nobody changed it since `expected_version`.

        Raises `ConcurrentUpdate` when the request moved on (or its grant was consumed) in the meantime,
        `NotFound` when there is no such request. Either way nothing is written.
        """
        self._commit(lambda tx: self._apply(tx, transition, expected_version), transition.record.id)
        return transition.record

    def set_response(self, request_id: str, response: dict[str, Any]) -> None:
        """Remember the first answer to a submit, replayed when the same idempotency key comes again."""

        def write(tx: Write) -> None:
            result = tx.conn.execute(
                update(requests).where(requests.c.id == request_id).values(response=_dump(response))
            )
            if result.rowcount == 0:
                raise NotFound(f"no request {request_id}")

        self._commit(write, request_id)

    def get(self, request_id: str) -> RequestRecord | None:
        with self._read() as conn:
            stored_json = conn.execute(select(requests.c.record).where(requests.c.id == request_id)).scalar()
        return None if stored_json is None else RequestRecord.model_validate_json(stored_json)

    def get_response(self, request_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            stored_json = conn.execute(
                select(requests.c.response).where(requests.c.id == request_id)
            ).scalar()
        return None if stored_json is None else _load_object(stored_json)

    def list_requests(
        self,
        *,
        status: Status | None = None,
        requester: str | None = None,
        reviewable_groups: set[str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[RequestRecord], str | None]:
        """Newest first, `limit` at a time; pass the returned cursor back for the next page (None: no more).

        `reviewable_groups` keeps the requests whose route names at least one of these groups. Keyset
        pagination: a page never repeats or skips a request, however many arrive in between. The review
        queue (pending, by groups) reads `pending_route_groups`, so it costs the same whether a thousand
        or a million other requests are stored; the service still asks `workflow.may_review` of each.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = None if cursor is None else _decode_cursor(cursor)
        query: Select[Any] | None
        if status == Status.PENDING and reviewable_groups and requester is None:
            query = _review_queue_query(reviewable_groups, after, limit)
        else:
            query = _listing_query(status, requester, reviewable_groups, after, limit)
        if query is None:
            return [], None
        with self._read() as conn:
            rows = conn.execute(query).all()
        page = rows[:limit]
        records = [RequestRecord.model_validate_json(row.record) for row in page]
        next_cursor = _encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
        return records, next_cursor

    def process_due(
        self,
        now: datetime,
        handle: DueHandler,
        limit: int | None = None,
        *,
        batch_size: int = DUE_BATCH_SIZE,
        time_budget: float = DUE_TIME_BUDGET,
    ) -> int:
        """Apply the timer transitions due at `now`; returns how many requests changed.

        Due requests are taken `batch_size` at a time, oldest deadline first, each batch in one transaction
        that holds their rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the write lock on SQLite) and
        re-checks them there, so several replicas sweeping at once share the work and never handle one
        request twice. Batches continue until nothing is due, `limit` requests were looked at or
        `time_budget` seconds passed (the next sweep goes on). `handle` runs inside the transaction: keep
        it pure and quick (`keyturn.workflow.due_transition`); it returns None when there is nothing to do.
        """
        deadline = time.monotonic() + time_budget
        changed = seen = 0
        while limit is None or seen < limit:
            size = batch_size if limit is None else min(batch_size, limit - seen)
            try:
                taken, done = self._process_due_batch(now, handle, size)
            except ConcurrentUpdate as exc:
                log.warning("timer sweep rolled back: %s", exc)
                break
            changed += done
            seen += taken
            if taken < size or time.monotonic() >= deadline:
                break
        return changed

    def _process_due_batch(self, now: datetime, handle: DueHandler, size: int) -> tuple[int, int]:
        """One transaction: (requests looked at, requests changed).

        The rows are held (locked) for the whole transaction, so their versions cannot move: the
        transitions are computed first, then written with one executemany per kind of change and one
        ledger append for the whole batch.
        """
        with self._write() as tx:
            query = (
                select(requests.c.id, requests.c.record)
                .where(requests.c.next_deadline <= now)
                .order_by(requests.c.next_deadline)
                .limit(size)
            )
            if self.backend == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = tx.conn.execute(query).all()
            transitions: list[tuple[workflow.Transition, int]] = []
            idle: list[dict[str, Any]] = []
            for row in rows:
                try:
                    record = RequestRecord.model_validate_json(row.record)
                    transition = handle(record)
                except Exception:
                    # One bad request must not stop the sweep for the others; it stays due and untouched.
                    log.exception("timer transition of request %s failed", row.id)
                    continue
                if transition is None:
                    # Store the deadline the workflow computes now, so a stale one is not picked up forever.
                    idle.append({"b_id": row.id, "b_deadline": workflow.next_deadline(record)})
                else:
                    transitions.append((transition, record.version))
            if idle:
                tx.conn.execute(
                    update(requests)
                    .where(requests.c.id == bindparam("b_id"))
                    .values(next_deadline=bindparam("b_deadline")),
                    idle,
                )
            if transitions:
                self._apply_many(tx, transitions)
        return len(rows), len(transitions)

    def _apply_many(self, tx: Write, transitions: list[tuple[workflow.Transition, int]]) -> None:
        """`_apply` for many transitions of rows this transaction holds: one executemany, one append."""
        updates = []
        for transition, expected_version in transitions:
            record = transition.record
            if record.version <= expected_version:
                raise StoreError(f"a transition of {record.id} must move past version {expected_version}")
            columns = _request_columns(record)
            for immutable in _IMMUTABLE_COLUMNS:
                del columns[immutable]
            updates.append({**columns, "b_id": record.id, "b_version": expected_version})
        names = [name for name in updates[0] if not name.startswith("b_")]
        result = tx.conn.execute(
            update(requests)
            .where(requests.c.id == bindparam("b_id"), requests.c.version == bindparam("b_version"))
            .values({name: bindparam(name) for name in names}),
            updates,
        )
        if result.rowcount != len(updates):
            # Cannot happen while the rows are held; if it ever does, write nothing (the next sweep retries).
            raise ConcurrentUpdate(f"{len(updates) - result.rowcount} due requests moved during the sweep")
        _unindex_decided(tx.conn, [transition.record for transition, _ in transitions])
        new_events: list[Event] = []
        for transition, _ in transitions:
            self._save_grant(tx.conn, transition)
            new_events.extend(transition.events)
            tx.changed.add(transition.record.id)
        # One lock of the ledger head for the whole batch, and one COPY on PostgreSQL.
        tx.append(tuple(new_events))

    def events_for_request(self, request_id: str) -> list[StoredEvent]:
        with self._read() as conn:
            rows = conn.execute(
                select(events).where(events.c.request_id == request_id).order_by(events.c.seq)
            ).all()
        return [_stored_event(row) for row in rows]

    # --- decision records ---------------------------------------------------------------------------

    def record_decision(self, decision: DecisionRecord) -> None:
        """A policy evaluation that is not part of a submit (e.g. a re-check when a grant is consumed)."""
        self._commit(
            lambda tx: tx.conn.execute(insert(decision_records).values(**_decision_columns(decision))),
            decision.request_id or "",
        )

    def decisions(self, *, request_id: str | None = None, limit: int = 100) -> list[DecisionRecord]:
        query = select(decision_records).order_by(decision_records.c.ts, decision_records.c.id).limit(limit)
        if request_id is not None:
            query = query.where(decision_records.c.request_id == request_id)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            DecisionRecord(
                id=row.id,
                ts=row.ts,
                request_id=row.request_id,
                request_digest=row.request_digest,
                decision=row.decision,
                rules=tuple(json.loads(row.rules)),
                policy_revision=row.policy_revision,
            )
            for row in rows
        ]

    # --- ledger -------------------------------------------------------------------------------------

    def events(self, after_seq: int = -1, limit: int = 1000) -> list[StoredEvent]:
        """Events with `seq > after_seq`, in order, at most `limit`."""
        with self._read() as conn:
            rows = conn.execute(
                select(events).where(events.c.seq > after_seq).order_by(events.c.seq).limit(limit)
            ).all()
        return [_stored_event(row) for row in rows]

    def leaf_hashes(self, after_seq: int = -1, limit: int = 100_000) -> list[bytes]:
        """The stored leaf hashes of the events with `seq > after_seq`, in order: what a Merkle tree needs,
        without parsing payloads."""
        with self._read() as conn:
            hashes = conn.execute(
                select(events.c.leaf_hash).where(events.c.seq > after_seq).order_by(events.c.seq).limit(limit)
            ).scalars()
            return [bytes.fromhex(h) for h in hashes]

    def head_seq(self) -> int:
        """The seq of the newest event; -1 while the ledger is empty. The tree size is `head_seq() + 1`."""
        with self._read() as conn:
            next_seq: int = conn.execute(
                select(ledger_head.c.next_seq).where(ledger_head.c.id == 1)
            ).scalar_one()
        return next_seq - 1

    def add_checkpoint(
        self, size: int, root_hash: str, note: str, key_name: str, created_at: datetime
    ) -> bool:
        """False when a checkpoint of this size exists already (another replica signed it first)."""
        try:
            with self._write() as tx:
                tx.conn.execute(
                    insert(checkpoints).values(
                        size=size, root_hash=root_hash, note=note, key_name=key_name, created_at=created_at
                    )
                )
        except IntegrityError:
            return False
        return True

    def checkpoints(self) -> list[StoredCheckpoint]:
        with self._read() as conn:
            rows = conn.execute(select(checkpoints).order_by(checkpoints.c.size)).all()
        return [
            StoredCheckpoint(
                size=row.size,
                root_hash=row.root_hash,
                note=row.note,
                key_name=row.key_name,
                created_at=row.created_at,
            )
            for row in rows
        ]

    def add_ledger_key(self, name: str, public_key: str, created_at: datetime) -> None:
        try:
            with self._write() as tx:
                tx.conn.execute(
                    insert(ledger_keys).values(name=name, public_key=public_key, created_at=created_at)
                )
        except IntegrityError as exc:
            raise StoreError(f"a ledger key named {name!r} exists already") from exc

    def retire_ledger_key(self, name: str, retired_at: datetime) -> bool:
        """False when there is no such key or it was retired already."""
        with self._write() as tx:
            result = tx.conn.execute(
                update(ledger_keys)
                .where(ledger_keys.c.name == name, ledger_keys.c.retired_at.is_(None))
                .values(retired_at=retired_at)
            )
        return result.rowcount == 1

    def ledger_keys(self) -> list[StoredLedgerKey]:
        with self._read() as conn:
            rows = conn.execute(
                select(ledger_keys).order_by(ledger_keys.c.created_at, ledger_keys.c.name)
            ).all()
        return [
            StoredLedgerKey(
                name=row.name, public_key=row.public_key, created_at=row.created_at, retired_at=row.retired_at
            )
            for row in rows
        ]

    def append_events(self, new_events: tuple[Event, ...]) -> None:
        """Append events that belong to no transition (administration), in one transaction."""
        with self._write() as tx:
            self._append_events(tx.conn, new_events)

    # --- operations ---------------------------------------------------------------------------------

    def pending_summary(self) -> tuple[dict[str, int], datetime | None]:
        """Pending requests by risk tier (untiered ones under "none") and the creation time of the oldest:
        one aggregate query over the (status, created_at) index, as many rows as there are tiers."""
        tier = func.coalesce(requests.c.tier, "none")
        with self._read() as conn:
            rows = conn.execute(
                select(tier, func.count(), func.min(requests.c.created_at))
                .where(requests.c.status == Status.PENDING.value)
                .group_by(tier)
            ).all()
        oldest = [_aware(r[2]) for r in rows if r[2] is not None]
        return {str(r[0]): int(r[1]) for r in rows}, (min(oldest) if oldest else None)

    # --- transactions -------------------------------------------------------------------------------

    def _commit(self, work: Callable[[Write], T], request_id: str) -> T:
        """A write of a request's life: group-committed with the concurrent ones (`keyturn.store.commit`),
        or in a transaction of its own when group commit is off. Returns once it is committed."""
        if self.committer is None:
            with self._write() as tx:
                return work(tx)
        with self._unavailable_on_operational_error():
            return self.committer.run(work, request_id)

    @contextmanager
    def _write(self) -> Iterator[Write]:
        """One write transaction; the change feed hears about it only once it has committed."""
        with self._unavailable_on_operational_error(), self._transaction() as conn:
            tx = Write(conn)
            yield tx
            self._seal(tx)
        if tx.changed:
            self.feed.after_commit(tx.changed)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A write transaction, committed on a clean exit. On SQLite it takes the write lock at BEGIN."""
        with self.engine.connect() as conn:
            if self.backend == "sqlite":
                conn.execution_options(**{BEGIN_MODE: "IMMEDIATE"})
            with conn.begin():
                yield conn

    def _seal(self, tx: Write) -> None:
        """The end of every write transaction: its ledger events in one append (the ledger lock is taken
        last and held only from here to the commit), then the change feed's part of the commit."""
        if tx.events:
            self._append_events(tx.conn, tuple(tx.events))
        if tx.changed:
            self.feed.before_commit(tx.conn, tx.changed)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._unavailable_on_operational_error(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _unavailable_on_operational_error(self) -> Iterator[None]:
        """Every database failure that is not the request's fault becomes `StoreUnavailable` (or
        `StorageFull`); constraint violations and the store's own errors pass through unchanged."""
        try:
            yield
        except (StoreError, IntegrityError):
            raise
        except (SQLAlchemyError, psycopg.Error, sqlite3.Error) as exc:
            unavailable = unavailable_from(exc)
            if unavailable is None:
                raise
            raise unavailable from exc

    # --- the pieces of a transition -----------------------------------------------------------------

    def _apply(self, tx: Write, transition: workflow.Transition, expected_version: int) -> None:
        record = transition.record
        if record.version <= expected_version:
            raise StoreError(
                f"a transition of {record.id} must move past version {expected_version}, "
                f"not to {record.version}"
            )
        columns = _request_columns(record)
        for immutable in _IMMUTABLE_COLUMNS:
            del columns[immutable]
        result = tx.conn.execute(
            update(requests)
            .where(requests.c.id == record.id, requests.c.version == expected_version)
            .values(**columns)
        )
        if result.rowcount == 0:
            current = tx.conn.execute(select(requests.c.version).where(requests.c.id == record.id)).scalar()
            if current is None:
                raise NotFound(f"no request {record.id}")
            raise ConcurrentUpdate(f"request {record.id} is at version {current}, not {expected_version}")
        _unindex_decided(tx.conn, [record])
        self._save_grant(tx.conn, transition)
        self._write_outbox(tx.conn, transition)
        tx.append(transition.events)
        tx.changed.add(record.id)

    def _write_outbox(self, conn: Connection, transition: workflow.Transition) -> None:
        """The notifications of a transition, in its transaction: they commit or roll back with it."""
        if self.planner is None:
            return
        plan = self.planner(transition)
        if plan:
            write_plan(conn, plan, transition.record.id, transition.record.updated_at)

    def _save_grant(self, conn: Connection, transition: workflow.Transition) -> None:
        record = transition.record
        grant = record.grant
        if grant is None:
            return
        consumed_by = record.executor if grant.consumed_at is not None else None
        stored = conn.execute(select(grants.c.consumed_at).where(grants.c.id == grant.id)).first()
        if stored is None:  # issued by this transition
            conn.execute(
                insert(grants).values(
                    id=grant.id,
                    request_id=record.id,
                    params_digest=grant.params_digest,
                    issued_at=grant.issued_at,
                    expires_at=grant.expires_at,
                    consumed_at=grant.consumed_at,
                    consumed_by=consumed_by,
                )
            )
            return
        consumes = any(e.type is EventType.GRANT_CONSUMED for e in transition.events)
        if grant.consumed_at is None or (stored.consumed_at is not None and not consumes):
            return  # nothing new about this grant (e.g. a result reported after it was consumed)
        # The version check already makes this exactly-once; the grant row guards it a second time, so a
        # grant can never be consumed twice even by a write that bypassed the request's version.
        result = conn.execute(
            update(grants)
            .where(grants.c.id == grant.id, grants.c.consumed_at.is_(None))
            .values(consumed_at=grant.consumed_at, consumed_by=consumed_by)
        )
        if result.rowcount == 0:
            raise ConcurrentUpdate(f"grant {grant.id} was already consumed")

    def _append_events(self, conn: Connection, new_events: tuple[Event, ...]) -> None:
        if not new_events:
            return
        # The row lock serialises appenders across connections and replicas: no gaps, no forks.
        first_seq: int = conn.execute(
            select(ledger_head.c.next_seq).where(ledger_head.c.id == 1).with_for_update()
        ).scalar_one()
        rows = []
        for seq, event in enumerate(new_events, start=first_seq):
            kind = event.type.value
            leaf, payload = event_leaf(seq, event.ts, kind, event.actor, event.request_id, event.payload)
            rows.append(
                (seq, event.ts, kind, event.actor, event.request_id, payload.decode(), leaf_hash(leaf).hex())
            )
        columns = ("seq", "ts", "type", "actor", "request_id", "payload", "leaf_hash")
        if conn.dialect.name == "postgresql" and len(rows) >= 32:
            # COPY streams the rows in one command; an executemany would send (and psycopg would build)
            # one INSERT per event. Same connection, same transaction, same lock. (A few rows, as one
            # transition has, go faster the other way: COPY costs one more round trip.)
            driver: Any = conn.connection.driver_connection
            target = conn.dialect.identifier_preparer.format_table(events)
            with (
                driver.cursor() as cursor,
                cursor.copy(f"COPY {target} ({', '.join(columns)}) FROM STDIN") as copy,
            ):
                for row in rows:  # (a naive `ts` was refused above, by `event_leaf`)
                    copy.write_row(row)
        else:
            conn.execute(insert(events), [dict(zip(columns, row, strict=True)) for row in rows])
        conn.execute(update(ledger_head).where(ledger_head.c.id == 1).values(next_seq=first_seq + len(rows)))

    def _raise_if_key_used(self, conn: Connection, requester: str, key: str) -> None:
        row = conn.execute(
            select(requests.c.record, requests.c.response).where(
                requests.c.requester == requester, requests.c.idempotency_key == key
            )
        ).first()
        if row is not None:
            raise DuplicateIdempotencyKey(
                RequestRecord.model_validate_json(row.record),
                None if row.response is None else _load_object(row.response),
            )


# --- row mapping --------------------------------------------------------------------------------------


def _request_columns(record: RequestRecord) -> dict[str, Any]:
    request = record.request
    return {
        "id": record.id,
        "status": record.status.value,
        "action": request.action,
        "resource": request.resource,
        "requester": request.requester.id,
        "on_behalf_of": request.on_behalf_of,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "expires_at": record.expires_at,
        "next_deadline": workflow.next_deadline(record),
        "version": record.version,
        "idempotency_key": request.idempotency_key,
        "record": record.model_dump_json(),
        "tier": record.verdict.route.tier if record.verdict.route is not None else None,
    }


def _listing_query(
    status: Status | None,
    requester: str | None,
    reviewable_groups: set[str] | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> Select[Any] | None:
    """Any listing but the review queue, newest first; None when it is empty by definition."""
    query = select(requests.c.record, requests.c.created_at, requests.c.id)
    if status is not None:
        query = query.where(requests.c.status == Status(status).value)
    if requester is not None:
        query = query.where(requests.c.requester == requester)
    if reviewable_groups is not None:
        if not reviewable_groups:
            return None
        query = query.where(
            exists().where(
                request_groups.c.request_id == requests.c.id,
                request_groups.c.group.in_(sorted(reviewable_groups)),
            )
        )
    if after is not None:
        query = query.where(_before(requests.c.created_at, requests.c.id, after))
    return query.order_by(requests.c.created_at.desc(), requests.c.id.desc()).limit(limit + 1)


def _review_queue_query(groups: set[str], after: tuple[datetime, str] | None, limit: int) -> Select[Any]:
    """The pending requests routed to any of `groups`, newest first, read from `pending_route_groups`.

    Each group contributes at most one page of candidates from its own slice of the index, so the cost is
    `len(groups) * limit` index rows whatever else is pending or decided. The candidates drive the join
    (ordered by their own columns, so no index of `requests` can tempt a planner into walking every
    pending request instead); `UNION` keeps a request routed to two of the groups once. `status` is
    still checked on the request row: the index only narrows where to look.
    """
    index = pending_route_groups
    per_group = []
    for group in sorted(groups):
        candidates = select(index.c.request_id, index.c.created_at).where(index.c.group == group)
        if after is not None:
            candidates = candidates.where(_before(index.c.created_at, index.c.request_id, after))
        candidates = candidates.order_by(index.c.created_at.desc(), index.c.request_id.desc()).limit(
            limit + 1
        )
        per_group.append(select(candidates.subquery()))
    union_of = per_group[0] if len(per_group) == 1 else union(*per_group)
    found = union_of.subquery()
    return (
        select(requests.c.record, requests.c.created_at, requests.c.id)
        .join_from(found, requests, requests.c.id == found.c.request_id)
        .where(requests.c.status == Status.PENDING.value)
        .order_by(found.c.created_at.desc(), found.c.request_id.desc())
        .limit(limit + 1)
    )


def _before(
    created_at: ColumnElement[datetime], row_id: ColumnElement[str], after: tuple[datetime, str]
) -> ColumnElement[bool]:
    """Rows after a keyset cursor in newest-first order. The leading `created_at <=` is implied by the
    `or_` but is what lets both databases start the index scan at the cursor instead of filtering to it."""
    after_created, after_id = after
    return and_(
        created_at <= after_created,
        or_(created_at < after_created, and_(created_at == after_created, row_id < after_id)),
    )


def _index_pending(conn: Connection, record: RequestRecord, groups: list[str]) -> None:
    """Enter a new request in the review queue's index under each of its route groups, if it is pending."""
    if record.status is Status.PENDING and groups:
        conn.execute(
            insert(pending_route_groups),
            [{"group": g, "created_at": record.created_at, "request_id": record.id} for g in groups],
        )


def _unindex_decided(conn: Connection, records: list[RequestRecord]) -> None:
    """Take requests that are no longer pending out of the review queue's index, in their transition's
    transaction. Requests without a route were never in it; for a reviewed request that has left pending
    earlier this is a no-op delete on the `request_id` index (cheaper than remembering the old status)."""
    decided = [r.id for r in records if r.status is not Status.PENDING and r.verdict.route is not None]
    if decided:
        conn.execute(delete(pending_route_groups).where(pending_route_groups.c.request_id.in_(decided)))


def _route_groups(record: RequestRecord) -> list[str]:
    """The groups a request's route names. Kept for the request's whole life: routes never change, and
    approvers may list the requests of their groups after they are decided too."""
    route = record.verdict.route
    if route is None:
        return []
    return sorted({group for requirement in route.requirements for group in requirement.groups})


def _decision_columns(decision: DecisionRecord) -> dict[str, Any]:
    return {
        "id": decision.id,
        "ts": decision.ts,
        "request_id": decision.request_id,
        "request_digest": decision.request_digest,
        "decision": decision.decision,
        "rules": json.dumps(list(decision.rules)),
        "policy_revision": decision.policy_revision,
    }


def _stored_event(row: Row[Any]) -> StoredEvent:
    return StoredEvent(
        seq=row.seq,
        ts=row.ts,
        type=row.type,
        actor=row.actor,
        request_id=row.request_id,
        payload=_load_object(row.payload),
        leaf_hash=row.leaf_hash,
    )


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _dump_optional(value: dict[str, Any] | None) -> str | None:
    return None if value is None else _dump(value)


def _load_object(stored_json: str) -> dict[str, Any]:
    value = json.loads(stored_json)
    if not isinstance(value, dict):
        raise StoreError("a stored JSON object is not an object")
    return value


def _encode_cursor(created_at: datetime, request_id: str) -> str:
    raw = f"{created_at.isoformat()}|{request_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, request_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(created)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor(f"not a cursor from this server: {cursor!r}") from exc
    if created_at.tzinfo is None or not request_id:
        raise InvalidCursor(f"not a cursor from this server: {cursor!r}")
    return created_at, request_id


def _aware(value: Any) -> datetime:
    """`min()` of a UtcDateTime column comes back untyped (SQLite: text): make it an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
