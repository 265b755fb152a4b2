"""The ASGI application: `create_app(settings)` wires the store, policy, keys and identity together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from keyturn import __version__, metrics
from keyturn.channels.registry import target_names
from keyturn.channels.runtime import running_channels
from keyturn.config import Settings
from keyturn.identity import build_authenticator
from keyturn.keys import KeyRing
from keyturn.ledger.checkpointer import running_checkpointer
from keyturn.policy import PolicyHolder
from keyturn.server import errors
from keyturn.server.api import actions, grants, ledger, system
from keyturn.service import Keyturn
from keyturn.store import Store

log = logging.getLogger("keyturn.server")


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store.open(settings.database)
        store.upgrade()
        keyring = KeyRing(settings.data_dir)
        policy = PolicyHolder(settings.policy, targets=target_names(settings))
        svc = Keyturn(settings, store, policy, keyring)
        app.state.keyturn = svc
        for problem in svc.unresolved_secrets():
            log.warning("%s: approved requests that are granted it will be refused at consume", problem)
        app.state.authenticator = build_authenticator(settings, store)
        await store.feed.start()
        timers = asyncio.create_task(_run_timers(svc, settings.timer_interval))
        try:
            async with (
                running_checkpointer(settings, store, keyring, svc.live_ledger.tree),
                running_channels(settings, store),
            ):
                yield
        finally:
            timers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timers
            await store.feed.stop()
            store.close()

    app = FastAPI(
        title="keyturn",
        version=__version__,
        summary="Action-level approvals for AI agents, pipelines and scripts.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(actions.router)
    app.include_router(grants.router)
    app.include_router(system.router)
    app.include_router(ledger.router)
    if settings.channels.slack is not None:  # Slack interactivity and chat account links
        from keyturn.channels import slack_http

        app.include_router(slack_http.build_router(settings))
    return app


async def _run_timers(svc: Keyturn, interval: float) -> None:
    """Expire and escalate due requests. Several replicas may run this: the store locks what it takes."""
    while True:
        try:
            done = await to_thread.run_sync(svc.tick)
            if done:
                metrics.TRANSITIONS.inc(done)
        except Exception:  # a failing sweep must not stop the next one
            log.exception("timer sweep failed")
        await asyncio.sleep(interval)
