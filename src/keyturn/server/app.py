"""The ASGI application: `create_app(settings)` wires the store, policy, keys and identity together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from keyturn import __version__, metrics
from keyturn.admin import Admin
from keyturn.channels.runtime import running_channels
from keyturn.config import Settings
from keyturn.identity import build_authenticator
from keyturn.ledger.checkpointer import running_checkpointer
from keyturn.operations import Operations
from keyturn.server import errors, reloader
from keyturn.server.api import actions, admin, grants, ledger, system
from keyturn.server.console import HERE as CONSOLE_DIR
from keyturn.server.console import (
    account_routes,
    build_console,
    ledger_routes,
    passkey_routes,
    policy_routes,
)
from keyturn.server.console import routes as console_routes
from keyturn.server.limits import RequestGuard
from keyturn.server.readiness import Readiness
from keyturn.server.startup import Components, prepare
from keyturn.service import Keyturn
from keyturn.store import StoreUnavailable

log = logging.getLogger("keyturn.server")


def create_app(settings: Settings, components: Components | None = None) -> FastAPI:
    """The app. `keyturn serve` prepares the `components` itself before it binds (so a start-up problem is
    one line before anything is created) and puts them in `app.state.components`; without them the
    lifespan prepares its own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prepared = components or getattr(app.state, "components", None)
        if prepared is None:
            prepared = await to_thread.run_sync(prepare, settings)
        store, policy, keyring = prepared.store, prepared.policy, prepared.keyring
        svc = Keyturn(settings, store, policy, keyring)
        app.state.keyturn = svc
        app.state.ops = Operations(store, policy, keyring)
        app.state.admin = Admin(
            store, keyring, users_file=settings.users_file, ledger_origin=settings.ledger.origin
        )
        for problem in svc.unresolved_secrets():
            log.warning("%s: approved requests that are granted it will be refused at consume", problem)
        app.state.authenticator = build_authenticator(settings, store)
        app.state.console = build_console(settings, svc, app.state.authenticator)
        await store.feed.start()
        timers = asyncio.create_task(_run_timers(svc, settings.timer_interval))
        try:
            async with (
                Readiness(store.probe_write).running() as app.state.readiness,
                running_checkpointer(settings, store, keyring, svc.live_ledger.tree),
                reloader.watching(policy, settings.policy_reload_interval),
                running_channels(settings, store, svc.redactor),
            ):
                yield
        finally:
            timers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timers
            await store.feed.stop()
            await app.state.console.http.aclose()
            store.close()

    app = FastAPI(
        title="keyturn",
        version=__version__,
        summary="Action-level approvals for AI agents, pipelines and scripts.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN, which an offline or locked-down host cannot
        # reach (a blank page): the machine-readable /openapi.json is served, the HTML viewers are not.
        docs_url=None,
        redoc_url=None,
    )
    errors.install(app)
    app.add_middleware(RequestGuard, max_body_bytes=settings.server.max_body_bytes)
    app.include_router(actions.router)
    app.include_router(grants.router)
    app.include_router(system.router)
    app.include_router(ledger.router)
    app.include_router(admin.router)
    app.include_router(console_routes.router)
    app.include_router(passkey_routes.router)
    app.include_router(ledger_routes.router)
    app.include_router(policy_routes.router)
    app.include_router(account_routes.router)
    app.mount("/console/static", StaticFiles(directory=str(CONSOLE_DIR / "static")), name="console-static")
    install_console_errors(app)
    if settings.channels.slack is not None:  # Slack interactivity and chat account links
        from keyturn.channels import slack_http

        app.include_router(slack_http.build_router(settings))
    if settings.channels.teams is not None:  # the Teams SDK is imported only when Teams is configured
        from keyturn.channels.teams_http import mount as mount_teams

        mount_teams(app, settings.channels.teams)
    return app


def install_console_errors(app: FastAPI) -> None:
    @app.exception_handler(console_routes.LoginRequired)
    async def login_required(_: Request, exc: console_routes.LoginRequired) -> RedirectResponse:
        target = "/console/login?next=" + quote(exc.next_path)
        if exc.message:
            target += "&error=" + quote(exc.message)
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(console_routes.CrossSiteRefused)
    async def cross_site(_: Request, exc: console_routes.CrossSiteRefused) -> PlainTextResponse:
        return PlainTextResponse(str(exc), status_code=403)


async def _run_timers(svc: Keyturn, interval: float) -> None:
    """Expire and escalate due requests. Several replicas may run this: the store locks what it takes."""
    while True:
        try:
            done = await to_thread.run_sync(svc.tick)
            if done:
                metrics.TRANSITIONS.inc(done)
        except StoreUnavailable as exc:  # expected while the database is away: one line, not a traceback
            log.warning("timer sweep failed: %s", exc)
        except Exception:  # a failing sweep must not stop the next one
            log.exception("timer sweep failed")
        await asyncio.sleep(interval)
