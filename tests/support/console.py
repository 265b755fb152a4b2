"""The console under test: a `keyturn serve` whose console logs in through a real OpenID provider."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, CDPSession, Page

from support.idp import IDP_PASSWORD, OidcProvider
from support.live import LiveServer

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@dataclass
class ConsoleWorld:
    """A keyturn server with console login by a real OpenID provider (and by password)."""

    server: LiveServer
    idp: OidcProvider
    browser: Browser
    replica_port: int
    base: str = ""  # the URL the browser uses (public_url): server.url, or http://localhost:PORT
    contexts: list[BrowserContext] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base = self.base or self.server.url

    def context(self, **options: Any) -> BrowserContext:
        ctx = self.browser.new_context(viewport=options.pop("viewport", DESKTOP), **options)
        ctx.set_default_timeout(20_000)
        self.contexts.append(ctx)
        return ctx

    def page(self, **options: Any) -> Page:
        return self.context(**options).new_page()

    def login(self, page: Page, user: str, *, base: str | None = None, next_path: str = "/console/") -> None:
        """Log in through the identity provider's real login form."""
        base = base or self.base
        page.goto(f"{base}/console/login?next={next_path}")
        page.click("#oidc-login")
        idp_login(page, user)
        page.wait_for_url(f"{base}{next_path}*")


def idp_login(page: Page, user: str, password: str = IDP_PASSWORD) -> None:
    page.locator("#login, #login-error, h1").first.wait_for()
    found = page.locator("#login").count()
    assert found == 1, f"no IdP login form at {page.url}: {page.inner_text('body')[:300]}"
    page.fill("#login", user)
    page.fill("#password", password)
    page.click("#submit")


def console_settings(idp: OidcProvider, workdir: Path) -> dict[str, Any]:
    secret = workdir / "console-client-secret"
    workdir.mkdir(parents=True, exist_ok=True)
    secret.write_text(idp.client_secret, encoding="utf-8")
    return {
        "issuers": [
            {"issuer": idp.issuer, "audience": idp.client_id, "kind": "human", "subject_claim": "email"}
        ],
        "console": {
            "oidc_issuer": idp.issuer,
            "client_id": idp.client_id,
            "client_secret": {"file": str(secret)},
        },
    }


def virtual_authenticator(page: Page) -> tuple[CDPSession, str]:
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added: dict[str, Any] = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, str(added["authenticatorId"])


def register_passkey(world: ConsoleWorld, page: Page) -> None:
    page.goto(world.base + "/console/passkeys")
    assert page.locator("#no-passkeys").is_visible()
    page.fill("#passkey-name", "test laptop")
    page.click("#register")
    page.locator("tr[data-passkey], #passkey-error:not([hidden])").first.wait_for()
    assert page.locator("#passkey-error").is_hidden(), page.locator("#passkey-error").inner_text()
    assert "test laptop" in page.locator("#passkeys").inner_text()


def shoot(page: Page, name: str, out: Path) -> None:
    """Nothing may overflow sideways (a phone scrolls only down); KEYTURN_SCREENSHOTS=DIR keeps the PNG."""
    width = page.viewport_size["width"] if page.viewport_size else 0
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= width, f"{name}: the page is {overflow}px wide in a {width}px viewport"
    if os.environ.get("KEYTURN_SCREENSHOTS"):
        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
