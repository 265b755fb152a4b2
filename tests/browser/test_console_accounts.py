"""The user's linked chat accounts (list, unlink) and the admins' outbox page (dead deliveries with the last
error, retried from the page), in Chromium against a real server; both forms refuse another origin."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from keyturn.store import Store
from keyturn.store.chat import ChatAccounts, ChatLink
from keyturn.store.outbox import Outbox
from support.channels import policy, webhook_settings
from support.console import PHONE, ConsoleWorld, shoot
from support.webhook_receiver import WebhookReceiver

CROSS_SITE = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}


def _link(world: ConsoleWorld, principal: str, user_id: str) -> None:
    store = Store.open(world.server.database_url)
    try:
        when = datetime.now(UTC)
        ChatAccounts(store).save_link(ChatLink("slack", "T0TEAM", user_id, principal, "code", when))
    finally:
        store.close()


def _links(world: ConsoleWorld) -> list[ChatLink]:
    store = Store.open(world.server.database_url)
    try:
        chat = ChatAccounts(store)
        return [*chat.links_of("user:alice@example.com"), *chat.links_of("user:bob@example.com")]
    finally:
        store.close()


def test_a_user_lists_and_unlinks_only_their_own_chat_accounts(world: ConsoleWorld, tmp_path: Path) -> None:
    _link(world, "user:alice@example.com", "UALICE1")
    _link(world, "user:alice@example.com", "UALICE2")
    _link(world, "user:bob@example.com", "UBOB")
    page = world.page()
    world.login(page, "alice")
    page.click("nav >> text=Chat accounts")
    rows = page.locator("tr[data-chat-account]")
    assert rows.count() == 2
    assert "UBOB" not in page.locator("#chat-accounts").inner_text()
    _shoot_both(world, page, "chat-accounts", tmp_path)

    # Another origin's form cannot unlink (the same check as every console form).
    forged = page.request.post(
        world.base + "/console/chat-accounts/unlink",
        form={"provider": "slack", "team_id": "T0TEAM", "user_id": "UALICE1"},
        headers=CROSS_SITE,
        max_redirects=0,
    )
    assert forged.status == 403
    # Nor can Alice unlink Bob's account by naming it.
    theirs = page.request.post(
        world.base + "/console/chat-accounts/unlink",
        form={"provider": "slack", "team_id": "T0TEAM", "user_id": "UBOB"},
        headers={"Origin": world.base},
        max_redirects=0,
    )
    assert theirs.status == 404
    assert len(_links(world)) == 3

    page.locator("tr[data-chat-account='slack:UALICE1'] button").click()
    page.wait_for_url(world.base + "/console/chat-accounts")
    assert page.locator("tr[data-chat-account]").count() == 1
    assert sorted(link.user_id for link in _links(world)) == ["UALICE2", "UBOB"]


def _password_login(world: ConsoleWorld, page: Page, user: str, password: str) -> None:
    from keyturn.identity.users import set_user_password

    set_user_password(world.server.workdir / "users.yaml", f"user:{user}@example.com", password)
    page.goto(world.base + "/console/login")
    page.fill("#user", f"{user}@example.com")
    page.fill("#password", password)
    page.click("#password-login")
    page.wait_for_url(world.base + "/console/")


def test_an_admin_sees_a_dead_delivery_with_its_error_and_retries_it(
    console_world_factory: Any, tmp_path: Path
) -> None:
    answers = iter([503])  # the first attempt fails; the retry from the page is answered 200

    siem = WebhookReceiver(respond=lambda _n: (next(answers, 200), {})).start()
    oncall = WebhookReceiver().start()
    try:
        hooks = webhook_settings(tmp_path / "hooks", {"siem": siem, "oncall": oncall})
        hooks["channels"]["delivery"] = {"retry_schedule": []}  # dead after the first failure
        world: ConsoleWorld = console_world_factory(policy=policy(), settings=hooks)
        created = world.server.client("agent:deploy-bot").submit("db.export", params={"rows": 1})
        dead = _wait_for_row(world, created["id"], "dead")
        assert dead.last_error and "503" in dead.last_error

        alice = world.page()
        world.login(alice, "alice")
        assert alice.locator("nav >> text=Outbox").count() == 0
        assert alice.goto(world.base + "/console/outbox").status == 403  # admins only

        frank = world.page()
        _password_login(world, frank, "frank", "frank the admin 123")
        frank.click("nav >> text=Outbox")
        row = frank.locator(f"#outbox-dead tr[data-outbox='{dead.id}']")
        assert "503" in row.inner_text() and "webhook:siem" in row.inner_text()
        _shoot_both(world, frank, "outbox", tmp_path)
        forged = frank.request.post(
            world.base + f"/console/outbox/{dead.id}/retry", headers=CROSS_SITE, max_redirects=0
        )
        assert forged.status == 403
        assert _wait_for_row(world, created["id"], "dead").attempts == 1

        row.locator("button").click()
        frank.wait_for_url(world.base + "/console/outbox")
        done = _wait_for_row(world, created["id"], "done")
        assert done.id == dead.id
        assert [r.id for r in siem.received] == [dead.id, dead.id]  # the replay carries the same id
        frank.reload()
        assert frank.locator(f"tr[data-outbox='{dead.id}']").count() == 0
    finally:
        siem.stop()
        oncall.stop()


def _wait_for_row(world: ConsoleWorld, request_id: str, status: str) -> Any:
    import time

    store = Store.open(world.server.database_url)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = Outbox(store).list_rows(request_id=request_id)
            found = [r for r in rows if r.target == "webhook:siem" and r.status == status]
            if found:
                return found[0]
            time.sleep(0.1)
    finally:
        store.close()
    raise AssertionError(f"no {status} outbox row for {request_id}")


def _shoot_both(world: ConsoleWorld, page: Page, name: str, tmp_path: Path) -> None:
    """The page as it is (desktop), then the same URL in a phone-sized page of the same session."""
    import os

    out = Path(os.environ.get("KEYTURN_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shoot(page, f"{name}-desktop", out)
    phone = page.context.new_page()
    phone.set_viewport_size(PHONE)
    phone.goto(page.url)
    shoot(phone, f"{name}-phone", out)
    phone.close()
