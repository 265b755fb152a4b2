"""Reviewing in the console: the live queue, approve with an edit (the agent's waiting SDK call wakes),
deny with a reason, and the guarantees that hold on every surface (no self-approval, no on-behalf-of)."""

from __future__ import annotations

import threading
from typing import Any

from keyturn.sdk import Gate
from support.console import ConsoleWorld


def test_queue_updates_live_and_an_approval_with_an_edit_wakes_the_waiting_agent(world: ConsoleWorld) -> None:
    page = world.page()
    world.login(page, "alice")
    assert page.locator("#queue-empty").is_visible()
    page.wait_for_selector("#queue[data-live-ready]")  # the SSE stream is open

    gate = Gate(world.server.url, world.server.tokens["agent:deploy-bot"], timeout=120)
    outcome: dict[str, Any] = {}

    def agent() -> None:
        with gate.request(
            "db.export",
            resource="postgres://prod/customers",
            params={"rows": 5000, "connection_string": "postgres://u:hunter2@db/prod"},
            justification="quarterly report",
        ) as approval:
            outcome["params"] = approval.params

    waiting = threading.Thread(target=agent)
    waiting.start()
    # No reload: the row appears through the live stream.
    row = page.locator("tr[data-request-id]")
    row.wait_for()
    assert "db.export" in row.inner_text()
    assert "1 from sre" in row.inner_text()

    row.locator("a").click()
    page.wait_for_selector("#review-form")
    body = page.locator("main").inner_text()
    assert "hunter2" not in page.content()  # the redacted connection string never reaches the page
    assert "[redacted]" in body
    assert "exports need an sre" in body  # the matching rule
    page.fill("input[name='edit:params.rows']", "100")
    page.fill("#comment", "100 rows are enough")
    page.click("#approve")
    page.wait_for_selector("#decided")
    # The waiting agent may already be running it.
    assert page.locator("#status").inner_text() in ("approved", "executing", "succeeded")
    diff = page.locator("#diff").inner_text()
    assert "5000" in diff and "100" in diff

    waiting.join(timeout=60)
    assert not waiting.is_alive()
    assert outcome["params"]["rows"] == 100  # the agent runs exactly what was approved
    gate.close()


def test_deny_needs_a_reason_and_ends_the_request(world: ConsoleWorld) -> None:
    created = world.server.client("agent:deploy-bot").submit(
        "shell.exec", params={"argv": ["rm", "-rf", "/tmp/x"]}
    )
    page = world.page()
    world.login(page, "bob", next_path=f"/console/requests/{created['id']}")
    page.click("#deny")
    assert "reason" in page.locator("#review-error").inner_text()
    page.fill("#comment", "not on a Friday")
    page.click("#deny")
    page.wait_for_selector("#decided")
    assert page.locator("#status").inner_text() == "denied"
    assert "not on a Friday" in page.locator(".reviews").inner_text()
    view = world.server.client("agent:deploy-bot").get(created["id"])
    assert view["status"] == "denied"


def test_the_requester_and_the_human_it_acts_for_cannot_approve_in_the_console(world: ConsoleWorld) -> None:
    created = world.server.client("agent:deploy-bot").submit(
        "shell.exec", params={"argv": ["ls"]}, on_behalf_of="user:olivia@example.com"
    )
    page = world.page()
    world.login(page, "olivia", next_path=f"/console/requests/{created['id']}")
    # She may deny what acts for her, never approve it: no approve button is offered.
    assert page.locator("#deny-only").is_visible()
    assert page.locator("#approve").count() == 0 and page.locator("#approve-passkey").count() == 0
    # A hand-made POST from her own console origin (same-origin, her session) is refused by the workflow.
    answer = page.evaluate(
        """async (id) => {
            const r = await fetch(`/console/requests/${id}/review`, {method: 'POST',
              headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'decision=approve'});
            return {status: r.status, text: await r.text()};
        }""",
        created["id"],
    )
    assert answer["status"] == 400
    assert "on_behalf_of" in answer["text"] or "behalf" in answer["text"]
    assert world.server.client("agent:deploy-bot").get(created["id"])["status"] == "pending"


def test_review_url_is_the_console_page(world: ConsoleWorld) -> None:
    created = world.server.client("agent:deploy-bot").submit("shell.exec", params={"argv": ["id"]})
    assert created["review_url"] == f"{world.server.url}/console/requests/{created['id']}"
    page = world.page()
    page.goto(created["review_url"])
    assert "/console/login" in page.url  # log in first, then back to the request
    page.click("#oidc-login")
    from support.console import idp_login

    idp_login(page, "alice")
    page.wait_for_url(created["review_url"])
    assert page.locator("h1").inner_text().startswith("shell.exec")
