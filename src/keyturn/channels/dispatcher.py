"""The dispatcher: delivers outbox rows through the channels, in every replica.

It wakes on the store's change feed (a transition that wrote rows commits, PostgreSQL NOTIFY carries it to
every replica) rather than polling, sleeps otherwise until the next row comes due, and:

- claims due rows under a lease (`Outbox.claim`: `FOR UPDATE SKIP LOCKED` on PostgreSQL, so two replicas
  never take one row; one (request, target) row at a time, so an update never overtakes its post);
- delivers them concurrently (at most `max_in_flight`), each attempt bounded by `timeout`;
- retries a failure on the configured schedule with jitter, or after the channel's own `retry_after`
  (HTTP Retry-After, Slack's 429), marks the row `dead` with the last error after the last attempt, and
  switches a target off when its endpoint says so (410 Gone);
- records outcomes in batches, one transaction per batch, with the message references posts return.

The row id travels with every attempt (`Delivery.id`): a receiver that saw an attempt whose answer was lost
(a crash between sending and recording) recognises the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from anyio import to_thread

from keyturn import metrics
from keyturn.channels.base import Channel, Delivery, DeliveryFailed, DeliveryKind, MessageRef
from keyturn.channels.plan import target_kind
from keyturn.config import DeliverySettings
from keyturn.model import Status
from keyturn.redact import Redactor
from keyturn.store import Store, StoreError, Subscription
from keyturn.store.outbox import CANCELLED, DEAD, DONE, PENDING, Claimed, Outbox, Outcome, StoredRef
from keyturn.views import request_view

log = logging.getLogger("keyturn.channels")

Clock = Callable[[], datetime]

IDLE_POLL = 5.0  # seconds: the longest sleep, so another replica's expired lease is picked up
GAUGE_EVERY = 1.0  # seconds between refreshes of the outbox gauges


def utcnow() -> datetime:
    return datetime.now(UTC)


def backoff(attempt: int, schedule: list[timedelta], jitter: float, rand: Callable[[], float]) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based), ± `jitter`."""
    base = schedule[min(attempt, len(schedule)) - 1].total_seconds()
    return max(0.0, base * (1 + jitter * (2 * rand() - 1)))


@dataclass
class Dispatcher:
    store: Store
    channels: dict[str, Channel]
    settings: DeliverySettings
    base_url: str
    # The server's keyed redactor (`Keyturn.redactor`), so cards show the API's digests. No default: the
    # unkeyed one would put guessable digests of secrets in chat (guarantee 9).
    redactor: Redactor
    clock: Clock = utcnow
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
    )
    rand: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.store)
        self._wakeup = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._results: list[Outcome] = []
        self._results_ready = asyncio.Event()
        self._gauges_at = 0.0
        self._stopping = False

    # --- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled. Start it after the feed (`store.feed.start()`), so no commit goes unheard."""
        async with self.store.feed.subscribe(None) as changes:
            listener = asyncio.create_task(self._forward(changes))
            flusher = asyncio.create_task(self._flush_forever())
            try:
                while True:
                    try:
                        await self._step()
                    except StoreError as exc:
                        log.warning("outbox: %s; trying again shortly", exc)
                        await asyncio.sleep(1.0)
                    except Exception:  # the dispatcher must outlive any one bad row or query
                        log.exception("outbox dispatcher step failed")
                        await asyncio.sleep(1.0)
            finally:
                listener.cancel()
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher  # a batch being written completes first (threads are not interrupted)
                await self._stop_deliveries()

    async def _forward(self, changes: Subscription) -> None:
        async for _ in changes:
            self._wakeup.set()

    async def _step(self) -> None:
        self._wakeup.clear()
        capacity = self.settings.max_in_flight - len(self._in_flight)
        claimed: list[Claimed] = []
        if capacity > 0:
            now = self.clock()
            lease_until = now + self.settings.lease
            claimed = await to_thread.run_sync(self.outbox.claim, now, capacity, self.owner, lease_until)
            for item in claimed:
                self._in_flight[item.row.seq] = asyncio.create_task(self._deliver(item))
        await self._refresh_gauges()
        if claimed and len(claimed) == capacity:
            return  # there may be more: claim again as soon as there is room
        if capacity <= 0:
            timeout = IDLE_POLL  # a finished delivery wakes us
        else:
            next_due = await to_thread.run_sync(self.outbox.next_due)
            timeout = IDLE_POLL
            if next_due is not None:
                timeout = min(IDLE_POLL, max(0.0, (next_due - self.clock()).total_seconds()))
            if not claimed:
                timeout = max(timeout, 0.02)  # a row another replica is claiming right now: do not spin
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    async def _refresh_gauges(self) -> None:
        if time.monotonic() - self._gauges_at < GAUGE_EVERY:
            return
        self._gauges_at = time.monotonic()
        now = self.clock()
        due, oldest = await to_thread.run_sync(self.outbox.due_stats, now)
        metrics.OUTBOX_DUE.set(due)
        metrics.OUTBOX_OLDEST_DUE_AGE.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)

    # --- one delivery ------------------------------------------------------------------------------

    async def _deliver(self, claimed: Claimed) -> None:
        try:
            outcome = await self._attempt(claimed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a channel bug must not kill the dispatcher: retry like any failure
            log.exception("delivery %s to %s raised", claimed.row.id, claimed.row.target)
            outcome = self._failed(claimed, DeliveryFailed(f"{type(exc).__name__}: {exc}"))
        channel = target_kind(claimed.row.target)
        metrics.DELIVERIES.labels(channel=channel, outcome=_metric_outcome(outcome)).inc()
        self._results.append(outcome)
        self._results_ready.set()

    async def _attempt(self, claimed: Claimed) -> Outcome:
        row, record = claimed.row, claimed.record
        kind = DeliveryKind(row.kind)
        if claimed.disabled is not None:
            return self._outcome(
                claimed, DEAD, attempts=row.attempts, error=f"target disabled: {claimed.disabled}"
            )
        channel = self.channels.get(target_kind(row.target))
        if channel is None:
            return self._outcome(
                claimed, DEAD, attempts=row.attempts, error=f"no channel is configured for {row.target}"
            )
        if kind is DeliveryKind.ESCALATE:
            # An escalation is never sent once the request is resolved: look again right before sending
            # (the claim read it too, but a decision may have committed since).
            fresh = await to_thread.run_sync(self.store.get, row.request_id)
            if fresh is None or fresh.status is not Status.PENDING:
                return self._outcome(
                    claimed, CANCELLED, attempts=row.attempts, error="the request was resolved first"
                )
            record = fresh
        payload = row.payload or {}
        view = payload.get("view") if kind is DeliveryKind.EVENT else None
        if not isinstance(view, dict):
            view = request_view(record, base_url=self.base_url, redactor=self.redactor)
        delivery = Delivery(
            id=row.id,
            kind=kind,
            target=row.target,
            event_type=row.event_type,
            view=view
            if isinstance(view, dict)
            else request_view(record, base_url=self.base_url, redactor=self.redactor),
            ref=_message_ref(claimed.ref),
        )
        attempts = row.attempts + 1
        try:
            async with asyncio.timeout(self.settings.timeout.total_seconds() + 1.0):
                posted = await self._send(channel, delivery, payload)
        except DeliveryFailed as failed:
            if failed.disable:
                await to_thread.run_sync(self.outbox.disable_target, row.target, str(failed), self.clock())
                log.warning("%s is disabled: %s (keyturn channels enable %s)", row.target, failed, row.target)
            return self._failed(claimed, failed)
        except TimeoutError:
            return self._failed(claimed, DeliveryFailed(f"{row.target}: no answer within the timeout"))
        ref = None
        if posted is not None:
            ref = StoredRef(
                posted.target or row.target, posted.conversation, posted.message_id, dict(posted.extra)
            )
        return self._outcome(claimed, DONE, attempts=attempts, ref=ref)

    async def _send(
        self, channel: Channel, delivery: Delivery, payload: dict[str, object]
    ) -> MessageRef | None:
        kind = delivery.kind
        if kind is DeliveryKind.UPDATE:
            if delivery.ref is not None:
                await channel.update(delivery.ref, delivery)
                return None
            if not payload.get("post_if_missing", True):
                return None  # an escalation target whose step never came: there is no card to update
            return await channel.post(delivery)  # the post died or was never made: post the current state
        if kind is DeliveryKind.POST and delivery.ref is not None:
            await channel.update(delivery.ref, delivery)  # a replayed post whose card exists already
            return None
        return await channel.post(delivery)

    def _failed(self, claimed: Claimed, failed: DeliveryFailed) -> Outcome:
        attempts = claimed.row.attempts + 1
        schedule = self.settings.retry_schedule
        if failed.permanent or attempts > len(schedule):
            return self._outcome(claimed, DEAD, attempts=attempts, error=str(failed))
        if failed.retry_after is not None:
            wait = min(failed.retry_after, self.settings.max_retry_after.total_seconds())
        else:
            wait = backoff(attempts, schedule, self.settings.jitter, self.rand)
        due = self.clock() + timedelta(seconds=wait)
        return self._outcome(claimed, PENDING, attempts=attempts, error=str(failed), due_at=due)

    @staticmethod
    def _outcome(
        claimed: Claimed,
        status: str,
        *,
        attempts: int,
        error: str | None = None,
        due_at: datetime | None = None,
        ref: StoredRef | None = None,
    ) -> Outcome:
        return Outcome(
            seq=claimed.row.seq,
            status=status,
            attempts=attempts,
            due_at=due_at,
            error=error,
            ref=ref,
            request_id=claimed.row.request_id,
        )

    # --- recording outcomes ------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await self._results_ready.wait()
            try:
                await self._flush()
            except StoreError as exc:
                log.warning("outbox: could not record deliveries (%s); retrying", exc)
                await asyncio.sleep(0.5)

    async def _flush(self) -> None:
        self._results_ready.clear()
        batch, self._results = self._results, []
        if not batch:
            return
        try:
            await to_thread.run_sync(self.outbox.finish, batch, self.owner, self.clock())
        except BaseException:
            self._results[:0] = batch  # keep them for the next flush
            self._results_ready.set()
            raise
        for outcome in batch:
            self._in_flight.pop(outcome.seq, None)
        self._wakeup.set()  # the next row of each (request, target) may now go

    async def _stop_deliveries(self) -> None:
        """On shutdown: let deliveries under way finish briefly, record them, and give the rest back so that
        another replica (or this one, restarted) takes them at once. Any of those may have reached the
        receiver already: it is sent again with the same id, which the receiver can tell."""
        tasks = [t for t in self._in_flight.values() if not t.done()]
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=2.0)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._flush()
        unfinished = [seq for seq in self._in_flight if seq not in {o.seq for o in self._results}]
        with contextlib.suppress(Exception):
            await to_thread.run_sync(self.outbox.release, unfinished, self.owner, self.clock())


def _message_ref(ref: StoredRef | None) -> MessageRef | None:
    if ref is None:
        return None
    return MessageRef(
        target=ref.target, conversation=ref.conversation, message_id=ref.message_id, extra=ref.extra
    )


def _metric_outcome(outcome: Outcome) -> str:
    return {DONE: "delivered", PENDING: "retry", DEAD: "dead", CANCELLED: "cancelled"}[outcome.status]
