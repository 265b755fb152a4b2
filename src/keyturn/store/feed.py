"""Change notification: wake long-polls and SSE streams as soon as a request changes.

The store calls into the feed from worker threads; waiters live in an asyncio event loop. Each
subscription remembers its loop and is handed changes with `loop.call_soon_threadsafe`, so publishing
never touches asyncio state from the wrong thread. Subscriptions are indexed by request id: publishing a
change costs the same with ten thousand other waiters as with none.

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

    Thousands of these sit idle at once (one per long-poll or SSE stream), so it is kept small: slots, and
    the pending list is created by the first change rather than with every subscription.
    """

    __slots__ = ("_feed", "_loop", "_pending", "_waiter", "request_id")

    def __init__(self, feed: ChangeFeed, request_id: str | None) -> None:
        self.request_id = request_id
        self._feed = feed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[str | None] | None = None
        # A future only while someone waits (an asyncio.Event would keep a deque per subscription).
        self._waiter: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Subscription:
        self._loop = asyncio.get_running_loop()
        self._feed._add(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._feed._remove(self)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def wake(self) -> None:
        """From the subscriber's own loop: end the current (or next) wait as if anything had changed, e.g.
        because the waiter's credential was revoked and it must look again."""
        self._deliver(None)

    def _deliver(self, request_id: str | None) -> None:
        if self._pending is None:
            self._pending = [request_id]
        else:
            self._pending.append(request_id)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next_delivery(self) -> None:
        assert self._loop is not None, "enter the subscription first"
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def wait(self, timeout: float) -> bool:
        """True as soon as a change arrived since the last wait (or entry); False after `timeout` seconds."""
        if not self._pending:
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    await self._next_delivery()
            except TimeoutError:
                return False
        self._pending = None
        return True

    def __aiter__(self) -> AsyncIterator[str | None]:
        return self

    async def __anext__(self) -> str | None:
        """The next changed request id (`None`: anything may have changed, re-read everything)."""
        while not self._pending:
            await self._next_delivery()
        return self._pending.pop(0)


def _deliver_all(subscriptions: list[Subscription], request_id: str | None) -> None:
    for subscription in subscriptions:
        subscription._deliver(request_id)


class ChangeFeed:
    """In-process broadcast of request changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Indexed by request id, so a commit touches only that request's waiters (and the subscribers to
        # everything, under the key None), however many others are waiting.
        self._subscriptions: dict[str | None, set[Subscription]] = {}

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
        """Wake the subscribers of `request_id` (`None`: everyone). Safe from any thread.

        One `call_soon_threadsafe` per event loop, not per subscriber: a wake-up for everyone (after the
        listener reconnects) is one hand-over to the server's loop, however many are waiting."""
        with self._lock:
            if request_id is None:
                targets = [s for group in self._subscriptions.values() for s in group]
            else:
                targets = [*self._subscriptions.get(request_id, ()), *self._subscriptions.get(None, ())]
        by_loop: dict[asyncio.AbstractEventLoop, list[Subscription]] = {}
        dead: list[Subscription] = []
        for subscription in targets:
            loop = subscription.loop
            if loop is None or loop.is_closed():
                dead.append(subscription)
            else:
                by_loop.setdefault(loop, []).append(subscription)
        for loop, subscriptions in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, subscriptions, request_id)
            except RuntimeError:  # the loop closed between the check and the call
                dead.extend(subscriptions)
        for subscription in dead:
            self._remove(subscription)

    def before_commit(self, connection: Connection, request_ids: Iterable[str]) -> None:
        """Inside the writing transaction, just before it commits."""

    def after_commit(self, request_ids: Iterable[str]) -> None:
        """After the writing transaction committed."""
        for request_id in request_ids:
            self.publish(request_id)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(group) for group in self._subscriptions.values())

    def _add(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.setdefault(subscription.request_id, set()).add(subscription)

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            group = self._subscriptions.get(subscription.request_id)
            if group is not None:
                group.discard(subscription)
                if not group:
                    del self._subscriptions[subscription.request_id]


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
