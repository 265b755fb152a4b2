"""Change notification: wake long-polls and SSE streams as soon as a request changes.

The store calls into the feed from worker threads; waiters live in an asyncio event loop. Each
subscription remembers its loop and is handed changes with `loop.call_soon_threadsafe`, so publishing
never touches asyncio state from the wrong thread.

`ChangeFeed` broadcasts inside one process (SQLite: every writer is in this process, or at least on this
machine). `PostgresChangeFeed` adds `NOTIFY keyturn_changes, '<request id>'` inside each writing
transaction — PostgreSQL delivers it at commit and drops it on rollback — and a listener thread with its
own connection that re-broadcasts what it hears locally, so a waiter on replica A wakes within
milliseconds of a commit on replica B.

A notification is a hint, never data: waiters re-read the request after waking. That is why a wake-up for
everyone (`publish(None)`) is always safe, and is what the listener does after reconnecting, since
notifications sent while it was away are lost.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable
from types import TracebackType

import psycopg
from sqlalchemy import Connection, text

from keyturn.store.errors import StoreUnavailable

log = logging.getLogger("keyturn.store.feed")

CHANNEL = "keyturn_changes"


class Subscription:
    """Changes to one request (or to all, with `request_id=None`), collected from the moment of entry.

    Use it as `async with feed.subscribe(rid) as changes:` and then either `await changes.wait(timeout)`
    or `async for changed_id in changes:`. Changes that arrive between two waits are kept, so re-reading
    the request after entering and before waiting never loses a wake-up.
    """

    def __init__(self, feed: ChangeFeed, request_id: str | None) -> None:
        self.request_id = request_id
        self._feed = feed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[str | None] = deque()
        self._signal = asyncio.Event()

    async def __aenter__(self) -> Subscription:
        self._loop = asyncio.get_running_loop()
        self._feed._add(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._feed._remove(self)

    def wants(self, request_id: str | None) -> bool:
        return request_id is None or self.request_id is None or request_id == self.request_id

    def deliver_threadsafe(self, request_id: str | None) -> bool:
        """Called from any thread. False when the subscriber's loop is gone (the subscription is dead)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(self._deliver, request_id)
        except RuntimeError:  # the loop closed between the check and the call
            return False
        return True

    def _deliver(self, request_id: str | None) -> None:
        self._pending.append(request_id)
        self._signal.set()

    async def wait(self, timeout: float) -> bool:
        """True as soon as a change arrived since the last wait (or entry); False after `timeout` seconds."""
        if not self._pending:
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    await self._signal.wait()
            except TimeoutError:
                return False
        self._pending.clear()
        self._signal.clear()
        return True

    def __aiter__(self) -> AsyncIterator[str | None]:
        return self

    async def __anext__(self) -> str | None:
        """The next changed request id (`None`: anything may have changed, re-read everything)."""
        while not self._pending:
            self._signal.clear()
            await self._signal.wait()
        return self._pending.popleft()


class ChangeFeed:
    """In-process broadcast of request changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()

    # --- for waiters --------------------------------------------------------------------------------

    def subscribe(self, request_id: str | None = None) -> Subscription:
        return Subscription(self, request_id)

    async def wait_for_change(self, request_id: str, timeout: float) -> bool:
        """Wait for the next change of one request. To not miss a change that happens between reading the
        request and calling this, enter `subscribe()` before reading instead."""
        async with self.subscribe(request_id) as changes:
            return await changes.wait(timeout)

    async def start(self) -> None:
        """Begin receiving changes made elsewhere (nothing to do in process)."""

    async def stop(self) -> None:
        """Stop receiving changes made elsewhere."""

    def close(self) -> None:
        """Synchronous `stop()`, for `Store.close()`."""

    # --- for the store ------------------------------------------------------------------------------

    def publish(self, request_id: str | None) -> None:
        """Wake the subscribers of `request_id` (`None`: everyone). Safe from any thread."""
        with self._lock:
            targets = [s for s in self._subscriptions if s.wants(request_id)]
        dead = [s for s in targets if not s.deliver_threadsafe(request_id)]
        if dead:
            with self._lock:
                self._subscriptions.difference_update(dead)

    def before_commit(self, connection: Connection, request_ids: Iterable[str]) -> None:
        """Inside the writing transaction, just before it commits."""

    def after_commit(self, request_ids: Iterable[str]) -> None:
        """After the writing transaction committed."""
        for request_id in request_ids:
            self.publish(request_id)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def _add(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.add(subscription)

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)


class PostgresChangeFeed(ChangeFeed):
    """Cross-replica feed over LISTEN/NOTIFY."""

    def __init__(self, conninfo: str, *, reconnect_max_delay: float = 5.0) -> None:
        super().__init__()
        self._conninfo = conninfo
        self._reconnect_max_delay = reconnect_max_delay
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._listening = threading.Event()
        self.listener_backend_pid: int | None = None  # the LISTEN connection's server process, for tests
        self.reconnects = 0

    def before_commit(self, connection: Connection, request_ids: Iterable[str]) -> None:
        # Delivered by PostgreSQL at commit, to every listener including this replica's own, so
        # `after_commit` has nothing left to do.
        ids = sorted(set(request_ids))
        if len(ids) == 1:
            connection.execute(text("SELECT pg_notify(:channel, :id)"), {"channel": CHANNEL, "id": ids[0]})
        elif ids:  # a timer sweep's batch: one statement, not one round trip per request
            connection.execute(
                text("SELECT pg_notify(:channel, id) FROM unnest(CAST(:ids AS text[])) AS id"),
                {"channel": CHANNEL, "ids": ids},
            )

    def after_commit(self, request_ids: Iterable[str]) -> None:
        pass

    async def start(self, timeout: float = 10.0) -> None:
        """Start the listener and return once it is listening (so no commit after this goes unheard)."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._listening.clear()
            self._thread = threading.Thread(target=self._listen_forever, name="keyturn-listen", daemon=True)
            self._thread.start()
        if not await asyncio.to_thread(self._listening.wait, timeout):
            await self.stop()
            raise StoreUnavailable(f"the change listener could not LISTEN within {timeout} s")

    async def stop(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5.0)

    def _listen_forever(self) -> None:
        delay = 0.05
        connected_before = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    self._conninfo, autocommit=True, application_name="keyturn-listen"
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listener_backend_pid = conn.info.backend_pid
                    self._listening.set()
                    if connected_before:
                        self.reconnects += 1
                        self.publish(None)  # whatever changed while we were away went unheard
                    connected_before = True
                    delay = 0.05
                    while not self._stopping.is_set():
                        # Returns after the timeout so that `close()` is noticed within a quarter of a second.
                        for notification in conn.notifies(timeout=0.25):
                            self.publish(notification.payload)
            except Exception as exc:  # psycopg.Error mostly; whatever it is, the listener must come back
                self._listening.clear()
                if self._stopping.is_set():
                    return
                log.warning("change listener lost its connection (%s); reconnecting in %.2f s", exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self._reconnect_max_delay)
