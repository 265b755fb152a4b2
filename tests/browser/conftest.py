"""Browser tests: Playwright driving Debian's Chromium (never a downloaded browser), a real `keyturn serve`
and a real OpenID provider (tests/support/idp.py).

Chromium is /usr/bin/chromium (`apt-get install chromium`; KEYTURN_CHROMIUM overrides). Under CI=true a
missing browser fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from support.console import ConsoleWorld, console_settings
from support.idp import start_oidc_provider
from support.live import free_port, start_server

CHROMIUM = os.environ.get("KEYTURN_CHROMIUM", "/usr/bin/chromium")


# Package scope, not session: Playwright's sync API keeps an event loop running in the main thread while it
# is started, and every later test that calls asyncio.run() would then fail. It stops when the browser
# tests are done.
@pytest.fixture(scope="package")
def playwright_instance() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        message = f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set KEYTURN_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="package")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    launched = playwright_instance.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        # As root (CI) Chromium needs --no-sandbox; nothing but local test pages is opened.
        args=["--no-sandbox", "--disable-dev-shm-usage"] if os.geteuid() == 0 else [],
    )
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def console_world_factory(tmp_path: Path, browser: Browser) -> Iterator[Any]:
    worlds: list[ConsoleWorld] = []

    def make(*, localhost: bool = False, **server_kwargs: Any) -> ConsoleWorld:
        """`localhost=True`: the browser uses http://localhost:PORT (public_url), which WebAuthn needs (a
        relying party id cannot be an IP address)."""
        port, replica_port = free_port(), free_port()
        host = "localhost" if localhost else "127.0.0.1"
        idp = start_oidc_provider(
            tmp_path / f"idp{len(worlds)}",
            redirect_uris=[f"http://{host}:{p}/console/login/callback" for p in (port, replica_port)],
        )
        try:
            settings = {
                **console_settings(idp, tmp_path / f"secrets{len(worlds)}"),
                **({"public_url": f"http://localhost:{port}"} if localhost else {}),
                **server_kwargs.pop("settings", {}),
            }
            server = start_server(
                tmp_path / f"server{len(worlds)}", port=port, settings=settings, **server_kwargs
            )
        except BaseException:
            idp.stop()
            raise
        world = ConsoleWorld(server, idp, browser, replica_port, base=f"http://{host}:{port}")
        worlds.append(world)
        return world

    try:
        yield make
    finally:
        for world in worlds:
            for ctx in world.contexts:
                ctx.close()
            world.server.stop()
            world.idp.stop()


@pytest.fixture
def world(console_world_factory: Any) -> ConsoleWorld:
    world: ConsoleWorld = console_world_factory()
    return world
