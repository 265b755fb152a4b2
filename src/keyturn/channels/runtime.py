"""Channels in a running server: the outbox planner on the store, the channels, the dispatcher task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from keyturn.channels.dispatcher import Dispatcher
from keyturn.channels.plan import PlanConfig, planner
from keyturn.channels.registry import build_channels
from keyturn.config import Settings
from keyturn.redact import Redactor
from keyturn.store import Store

log = logging.getLogger("keyturn.channels")


def install_planner(settings: Settings, store: Store, redactor: Redactor) -> None:
    """From now on every transition stored through `store` writes its outbox rows."""
    outcome_kind = "slack" if settings.channels.slack is not None else None
    store.planner = planner(
        PlanConfig(base_url=settings.base_url, outcome_kind=outcome_kind, redactor=redactor)
    )


@contextlib.asynccontextmanager
async def running_channels(settings: Settings, store: Store, redactor: Redactor) -> AsyncIterator[Dispatcher]:
    """Plan deliveries on every transition and run this replica's dispatcher until the block ends.

    Raises `ChannelConfigError` (a one-line start-up error) when a channel cannot start from its settings.
    """
    channels = build_channels(settings, store)
    install_planner(settings, store, redactor)
    dispatcher = Dispatcher(store, channels, settings.channels.delivery, settings.base_url, redactor)
    task = asyncio.create_task(dispatcher.run(), name="keyturn-outbox")
    try:
        yield dispatcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for channel in channels.values():
            with contextlib.suppress(Exception):
                await channel.aclose()
