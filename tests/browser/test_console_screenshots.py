"""Every console page at desktop and phone width: nothing overflows sideways on a phone, and each page is
reachable with the keyboard alone. KEYTURN_SCREENSHOTS=DIR also saves the PNGs (docs/img/ was made so)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.console import DESKTOP, PHONE, ConsoleWorld, shoot


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page_fits_and_is_keyboard_usable(world: ConsoleWorld, size: str, tmp_path: Path) -> None:
    out = Path(os.environ.get("KEYTURN_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    agent = world.server.client("agent:deploy-bot")
    agent.submit(
        "db.export",
        resource="postgres://prod/customers",
        params={"rows": 5000, "connection_string": "postgres://u:hunter2@db/prod"},
        justification="quarterly revenue report for finance",
    )
    agent.submit("k8s.delete", resource="deployment/payments-api", params={"namespace": "prod"})
    edited = agent.submit("shell.exec", params={"argv": ["systemctl", "restart", "nginx"], "cwd": "/"})
    world.server.client("user:sam@example.com").review(
        edited["id"], "approve", "restart only, no reload", params={"argv": ["systemctl", "reload", "nginx"]}
    )

    page = world.page(viewport=DESKTOP if size == "desktop" else PHONE)
    page.goto(world.server.url + "/console/login")
    shoot(page, f"login-{size}", out)
    world.login(page, "alice")
    page.locator("tr[data-request-id]").first.wait_for()
    shoot(page, f"queue-{size}", out)

    # Keyboard only: Tab from the top reaches the first request link, Enter opens it.
    page.keyboard.press("Tab")
    for _ in range(12):
        if page.evaluate("document.activeElement.closest('tr[data-request-id]') !== null"):
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('tr[data-request-id]') !== null")
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/requests/**")
    shoot(page, f"request-{size}", out)

    page.goto(f"{world.server.url}/console/requests/{edited['id']}")
    shoot(page, f"request-edited-{size}", out)
    page.goto(world.server.url + "/console/mine")
    shoot(page, f"mine-{size}", out)
    page.goto(world.server.url + "/console/sessions")
    shoot(page, f"sessions-{size}", out)
    page.goto(world.server.url + "/console/passkeys")
    shoot(page, f"passkeys-{size}", out)
