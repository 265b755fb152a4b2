"""The change feed: waiters wake within milliseconds of a commit (on PostgreSQL, of a commit made by another
replica), hear only what they subscribed to, never hear rolled-back work, and survive a lost listener."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import psycopg
import pytest

from keyturn import workflow
from keyturn.model import RequestRecord
from keyturn.store import ChangeFeed, PostgresChangeFeed, Store, StoreUnavailable, Subscription
from keyturn.store import store as store_module

if TYPE_CHECKING:
    from conftest import RequestFactory


@pytest.fixture
async def replica(database_url: str, store: Store) -> AsyncIterator[Store]:
    """The Store a waiter uses. On PostgreSQL another instance (another replica) than the writer's; on
    SQLite the writer's own, since its feed is in-process by design."""
    if store.backend == "sqlite":
        await store.feed.start()
        yield store
        return
    other = Store.open(database_url)
    await other.feed.start()
    try:
        yield other
    finally:
        await other.feed.stop()
        other.close()


async def insert_heard(store: Store, factory: RequestFactory, changes: Subscription) -> RequestRecord:
    """Insert a request under an open subscription and wait until its own notification has arrived, so
    that what the test asserts next is about later changes only."""
    transition = factory.submit()
    assert changes.request_id in (None, transition.record.id)
    await asyncio.to_thread(store.insert_request, transition, factory.decision(transition), None)
    assert await changes.wait(5.0)
    return transition.record


async def cancel_in_thread(store: Store, record: RequestRecord, factory: RequestFactory) -> float:
    """Cancel `record` from a worker thread (as the server does); returns the monotonic time of commit."""

    def work() -> float:
        store.apply(workflow.cancel(record, factory.agent, factory.tick()), record.version)
        return time.monotonic()

    return await asyncio.to_thread(work)


async def next_matching(changes: Subscription, wanted: str | None, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        async for changed in changes:
            if changed == wanted:
                return


async def test_waiter_wakes_within_100ms_of_a_commit(
    store: Store, replica: Store, factory: RequestFactory
) -> None:
    async with replica.feed.subscribe() as changes:
        record = await insert_heard(store, factory, changes)
        publisher = asyncio.create_task(cancel_in_thread(store, record, factory))
        assert await changes.wait(5.0)
        woke_at = time.monotonic()
        committed_at = await publisher
    assert woke_at - committed_at < 0.1
    cancelled = await asyncio.to_thread(replica.get, record.id)
    assert cancelled is not None and cancelled.version == record.version + 1


async def test_a_subscription_hears_only_its_request(
    store: Store, replica: Store, factory: RequestFactory
) -> None:
    async with replica.feed.subscribe() as everything:
        mine = await insert_heard(store, factory, everything)
        other = await insert_heard(store, factory, everything)
        async with replica.feed.subscribe(mine.id) as changes:
            await cancel_in_thread(store, other, factory)
            await next_matching(everything, other.id, timeout=5.0)  # the cancel was delivered …
            assert not await changes.wait(0.3)  # … but not to the subscriber of another request
            await cancel_in_thread(store, mine, factory)
            assert await changes.wait(5.0)


async def test_a_change_before_the_wait_is_not_lost(
    store: Store, replica: Store, factory: RequestFactory
) -> None:
    async with replica.feed.subscribe() as changes:
        record = await insert_heard(store, factory, changes)
        await cancel_in_thread(store, record, factory)
        await asyncio.sleep(0.5)  # delivered while nobody was waiting (no timing assert: a loaded CI is slow)
        assert await changes.wait(5.0)
        assert not await changes.wait(0.1)  # and consumed by that wait


async def test_rolled_back_work_notifies_nobody(
    store: Store, replica: Store, factory: RequestFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(leaf: bytes) -> bytes:
        raise RuntimeError("crash before commit")

    async with replica.feed.subscribe() as changes:
        record = await insert_heard(store, factory, changes)
        monkeypatch.setattr(store_module, "leaf_hash", broken)
        with pytest.raises(RuntimeError):
            await cancel_in_thread(store, record, factory)
        assert not await changes.wait(0.3)


async def test_subscribing_to_everything_yields_changed_ids(
    store: Store, replica: Store, factory: RequestFactory
) -> None:
    async with replica.feed.subscribe() as changes:
        inserted = [await asyncio.to_thread(factory.insert, store) for _ in range(3)]
        expected: list[str | None] = [r.id for r in inserted]
        heard: list[str | None] = []
        async with asyncio.timeout(5.0):
            async for request_id in changes:
                if request_id in expected:  # other deployments in the same database share the channel
                    heard.append(request_id)
                if len(heard) == 3:
                    break
    assert heard == expected


async def test_wait_for_change_times_out(replica: Store) -> None:
    started = time.monotonic()
    assert not await replica.feed.wait_for_change("req_quiet", 0.2)
    assert time.monotonic() - started >= 0.19
    assert replica.feed.subscriber_count == 0  # the subscription ended with the wait


@pytest.mark.postgresql
async def test_listener_reconnects_and_wakes_everyone(postgres_url: str, factory: RequestFactory) -> None:
    writer, waiter = Store.open(postgres_url), Store.open(postgres_url)
    try:
        writer.upgrade()
        await waiter.feed.start()
        feed = waiter.feed
        assert isinstance(feed, PostgresChangeFeed)
        lost = feed.listener_backend_pid
        async with feed.subscribe() as changes:
            record = await insert_heard(writer, factory, changes)
            admin_url = writer.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(admin_url) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (lost,))
            # Notifications sent while the listener was away are lost, so once back it wakes everyone.
            await next_matching(changes, None, timeout=10.0)
            assert feed.reconnects == 1 and feed.listener_backend_pid != lost
            await cancel_in_thread(writer, record, factory)
            await next_matching(changes, record.id, timeout=5.0)
    finally:
        await waiter.feed.stop()
        waiter.close()
        writer.close()


def test_subscribers_of_a_closed_loop_are_dropped() -> None:
    feed = ChangeFeed()
    loop = asyncio.new_event_loop()
    subscription = feed.subscribe("req_1")
    loop.run_until_complete(subscription.__aenter__())
    loop.close()
    assert feed.subscriber_count == 1
    feed.publish("req_1")  # must not raise in the publishing (store) thread
    assert feed.subscriber_count == 0


async def test_listener_that_cannot_connect_fails_start_and_stops() -> None:
    before = set(threading.enumerate())
    feed = PostgresChangeFeed("postgresql://postgres@127.0.0.1:9/nothing-listens-here")
    with pytest.raises(StoreUnavailable):
        await feed.start(timeout=0.5)
    listeners = [t for t in threading.enumerate() if t not in before and t.name == "keyturn-listen"]
    assert [t for t in listeners if t.is_alive()] == []
