"""Group commit: many concurrent writes share one durable commit.

A durable commit costs an fsync (SQLite WAL with `synchronous=FULL`) or a WAL flush (PostgreSQL with
`synchronous_commit=on`), and the ledger append serialises every writer on one lock (`BEGIN IMMEDIATE` on
SQLite, the `ledger_head` row on PostgreSQL) that is held through that commit. One transaction per write
therefore caps a process at one commit's latency per write, and on SQLite the waiting writers sleep in the
busy handler instead of queueing.

`Committer` is one writer thread per process (per `Store`). Callers hand it a job — a function that writes
through a `Write` — and block (a caller that finds no write in progress and none queued commits its own job
itself, one writer at a time still). The thread takes every job queued so far, runs each inside its own
SAVEPOINT within ONE transaction (a job that fails rolls back only its savepoint, and its caller gets the
exception), lets the store seal the batch (one ledger append for all the jobs' events, then the change
feed's `before_commit`), commits once, calls `published` (the feed's `after_commit`) and only then wakes the
callers. No caller returns before the commit that holds its write: nothing is acknowledged before it is on
disk. When the commit fails, every caller of the batch gets that error, also a caller whose own job had
failed (its error may have depended on a write of the batch that is now gone).

Jobs run in the order of their key (the request they touch), so two batches — of two replicas, or this
one and a plain write — lock request rows in one order and cannot deadlock on them; `ledger_head` is
still taken last, once per batch. A job that PostgreSQL picks as a deadlock victim anyway (a unique-index
wait is not ordered by key) is run again in the next batch: its savepoint left no trace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection

from keyturn.model import Event

log = logging.getLogger("keyturn.store.commit")

T = TypeVar("T")

# Jobs per transaction: enough to amortise a commit over any realistic burst, few enough that one batch
# holds the write lock for milliseconds, not seconds.
MAX_BATCH = 256

# A deadlock victim is run again in the next batch at most this many times, then its caller gets the error.
DEADLOCK_RETRIES = 3
_RETRYABLE_SQLSTATES = ("40P01", "40001")  # deadlock_detected, serialization_failure


@dataclass
class Write:
    """What one write did inside a transaction: the requests it changed (the change feed hears about them
    once it commits) and the ledger events it appends (all appended last, in one go, under the ledger
    lock)."""

    conn: Connection
    changed: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)

    def append(self, new_events: tuple[Event, ...]) -> None:
        self.events.extend(new_events)

    def absorb(self, other: Write) -> None:
        self.changed |= other.changed
        self.events.extend(other.events)


@dataclass
class _Job(Generic[T]):
    work: Callable[[Write], T]
    key: str
    done: Future[T] = field(default_factory=Future)
    attempts: int = 0


class Committer:
    """The per-process writer thread. `run(work, key)` returns `work`'s result once it is committed.

    `begin` opens a transaction (a context manager yielding its connection, committing on a clean exit);
    `seal` runs last inside it with the batch's combined `Write`; `published` runs after the commit with
    the changed request ids.
    """

    def __init__(
        self,
        begin: Callable[[], contextlib.AbstractContextManager[Connection]],
        seal: Callable[[Write], None],
        published: Callable[[set[str]], None],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._begin = begin
        self._seal = seal
        self._published = published
        self._max_batch = max_batch
        self._reset()
        self.batches = 0  # transactions committed or attempted, for tests and metrics
        # A forked child inherits these locks in whatever state a thread of the parent held them, and none
        # of the parent's threads: it starts afresh (weakly referenced: a closed store is not kept alive).
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(this))

    def _reset(self) -> None:
        self._queue: deque[_Job[Any]] = deque()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None  # the writer; a thread that is not it finishes and exits
        self._writing = threading.Lock()  # held by whoever writes a batch: the writer thread or a lone caller
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Callers waiting for their commit: jobs queued or in the batch being written."""
        with self._wakeup:
            return self._waiting

    def run(self, work: Callable[[Write], T], key: str) -> T:
        job: _Job[T] = _Job(work, key)
        with self._wakeup:
            self._waiting += 1
        try:
            if not self._write_alone(job):
                with self._wakeup:
                    self._start_if_needed()
                    self._queue.append(job)
                    self._wakeup.notify()
            return job.done.result()
        finally:
            with self._wakeup:
                self._waiting -= 1

    def _write_alone(self, job: _Job[Any]) -> bool:
        """Uncontended (no batch being written, none queued), the caller commits its own job in its own
        thread: no hand-off to the writer thread and back. Writes that arrive meanwhile queue for the
        writer thread, which waits for this one, so there is still one writer at a time."""
        if not self._writing.acquire(blocking=False):
            return False
        try:
            with self._wakeup:
                if self._queue:
                    return False
            self._commit([job])
        finally:
            self._writing.release()
        return True

    def close(self) -> None:
        """Finish the queued jobs, then stop the thread (a later `run` starts another, as an engine
        reconnects after `dispose()`)."""
        with self._wakeup:
            thread, self._thread = self._thread, None
            self._wakeup.notify_all()
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join()

    def _start_if_needed(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="keyturn-commit", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._wakeup:
                while not self._queue and self._thread is me:
                    self._wakeup.wait()
                if not self._queue:
                    return
            # Take the jobs only once it is this thread's turn to write: what queued while a caller wrote
            # alone joins this batch instead of waiting for the next.
            with self._writing:
                with self._wakeup:
                    count = min(len(self._queue), self._max_batch)
                    jobs = [self._queue.popleft() for _ in range(count)]
                retry = self._commit(jobs) if jobs else []
            if retry:
                with self._wakeup:
                    self._queue.extendleft(reversed(retry))

    def _commit(self, jobs: list[_Job[Any]]) -> list[_Job[Any]]:
        """One transaction for `jobs`; settles every job's future except those returned (to run again)."""
        jobs.sort(key=lambda job: job.key)  # stable: jobs on one request keep their arrival order
        self.batches += 1
        outcomes: list[tuple[_Job[Any], Any, BaseException | None]] = []
        retry: list[_Job[Any]] = []
        try:
            with self._begin() as conn:
                batch = Write(conn)
                for job in jobs:
                    write = Write(conn)
                    try:
                        with _savepoint(conn, alone=len(jobs) == 1):
                            value = job.work(write)
                    except Exception as exc:
                        if len(jobs) == 1:
                            raise  # no savepoint: the transaction rolls back, as a plain write would
                        if _retryable(exc) and job.attempts < DEADLOCK_RETRIES:
                            job.attempts += 1
                            retry.append(job)
                        else:
                            outcomes.append((job, None, exc))
                        continue
                    batch.absorb(write)
                    outcomes.append((job, value, None))
                self._seal(batch)
        except BaseException as exc:  # the commit (or the transaction) failed: nothing of it is on disk
            for job in jobs:
                job.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return []
        if batch.changed:
            try:
                self._published(batch.changed)
            except Exception:  # a wake-up is a hint; the write is committed and must be answered as such
                log.exception("the change feed failed after a commit")
        for job, value, error in outcomes:
            if error is None:
                job.done.set_result(value)
            else:
                job.done.set_exception(error)
        return retry


@contextlib.contextmanager
def _savepoint(conn: Connection, *, alone: bool) -> Iterator[None]:
    """A SAVEPOINT around one job of a batch; none for a job alone in its transaction (two round trips
    saved on the uncontended path, where the whole transaction is the job)."""
    if alone:
        yield
        return
    with conn.begin_nested():
        yield


def _reset_in_child(committer: weakref.ref[Committer]) -> None:
    alive = committer()
    if alive is not None:
        alive._reset()


def _retryable(exc: BaseException) -> bool:
    original = getattr(exc, "orig", None) or exc
    return getattr(original, "sqlstate", None) in _RETRYABLE_SQLSTATES
