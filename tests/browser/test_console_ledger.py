"""The ledger browser: auditors only; events with their covering checkpoint; an inclusion proof per event
that checks offline with `keyturn ledger check-proof`."""

from __future__ import annotations

import subprocess
import time

from playwright.sync_api import Page

from keyturn.identity.users import set_user_password
from support.console import ConsoleWorld
from support.live import keyturn_executable


def password_login(world: ConsoleWorld, user: str, password: str) -> Page:
    page = world.page()
    page.goto(world.base + "/console/login")
    page.fill("#user", user)
    page.fill("#password", password)
    page.click("#password-login")
    page.wait_for_url(world.base + "/console/")
    return page


def test_auditors_browse_the_ledger_and_download_a_proof_that_checks_offline(world: ConsoleWorld) -> None:
    created = world.server.client("agent:deploy-bot").submit("db.export", params={"rows": 10})
    set_user_password(world.server.workdir / "users.yaml", "user:erin@example.com", "erin the auditor 1")
    page = password_login(world, "erin@example.com", "erin the auditor 1")
    page.goto(world.base + "/console/ledger")
    assert page.locator(f"tr[data-seq] a[href='/console/requests/{created['id']}']").count() >= 2

    deadline = time.monotonic() + 30  # the server signs a checkpoint every few seconds in tests
    while page.locator("tr[data-seq='0'] a[download]").count() == 0 and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
    with page.expect_download() as download:
        page.locator("tr[data-seq='0'] a[download]").click()
    proof = world.server.workdir / "proof.json"
    download.value.save_as(proof)
    checked = subprocess.run(
        [keyturn_executable(), "ledger", "check-proof", str(proof)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK" in checked.stdout

    # Not an auditor: no ledger.
    alice = world.page()
    world.login(alice, "alice")
    alice.goto(world.base + "/console/ledger")
    assert "auditor" in alice.locator(".error").inner_text()
    assert alice.locator("#events").count() == 0
