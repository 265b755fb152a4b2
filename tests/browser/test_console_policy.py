"""Policy explain / dry-run in the console, and a human's own request (self-approval refused)."""

from __future__ import annotations

import json
from urllib.parse import quote

from support.console import ConsoleWorld


def test_policy_explain_says_what_would_happen_and_why(world: ConsoleWorld) -> None:
    page = world.page()
    world.login(page, "alice")
    page.goto(world.base + "/console/policy")
    page.fill("#action", "db.export")
    page.fill("#params", json.dumps({"rows": 2_000_000}))
    page.click("#dry-run button")
    assert page.locator("#decision").inner_text() == "deny"
    assert "huge exports are refused" in page.locator("#verdict").inner_text()
    page.goto(world.base + "/console/policy?action=db.export&params=" + quote('{"rows": 10}'))
    assert page.locator("#decision").inner_text() == "review"
    assert "1 from sre" in page.locator("#verdict").inner_text()
    page.goto(world.base + "/console/policy?action=db.export&params=" + quote("[1]"))
    assert "JSON object" in page.locator("#policy-error").inner_text()
    # A dry run records nothing.
    assert world.server.client("user:alice@example.com").list()["items"] == []


def test_a_human_cannot_approve_their_own_request_in_the_console(world: ConsoleWorld) -> None:
    created = world.server.client("user:alice@example.com").submit("shell.exec", params={"argv": ["id"]})
    page = world.page()
    world.login(page, "alice", next_path=f"/console/requests/{created['id']}")
    assert page.locator("#not-yours").is_visible()
    answer = page.evaluate(
        """async (id) => {
            const r = await fetch(`/console/requests/${id}/review`, {method: 'POST',
              headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'decision=approve'});
            return {status: r.status, text: await r.text()};
        }""",
        created["id"],
    )
    assert answer["status"] == 400 and "cannot review it" in answer["text"]
    page.goto(world.base + "/console/mine")
    assert page.locator(f"tr[data-request-id='{created['id']}']").count() == 1
