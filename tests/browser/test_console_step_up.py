"""Step-up in the console: a stale login cannot approve a `step_up` request; a fresh identity-provider login
(max_age, prompt=login; auth_time checked by keyturn) or a passkey made for that review can."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from support.console import ConsoleWorld, idp_login, register_passkey, virtual_authenticator
from support.live import DEFAULT_POLICY

STEP_UP_POLICY = (
    DEFAULT_POLICY
    + """\
  - name: production deploys
    match: {action: deploy.prod}
    decision: review
    quorum: 1
    approvers: [sre]
    step_up: true
"""
)


def age_sessions(world: ConsoleWorld, minutes: int) -> None:
    """Time passes: every session's login is now `minutes` old (what a step-up route looks at)."""
    engine = create_engine(world.server.database_url)
    with engine.begin() as conn:
        for id_hash, principal in conn.execute(text("SELECT id_hash, principal FROM console_sessions")).all():
            document = json.loads(principal)
            document["authn"]["at"] = (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()
            conn.execute(
                text("UPDATE console_sessions SET principal = :p WHERE id_hash = :h"),
                {"p": json.dumps(document), "h": id_hash},
            )
    engine.dispose()


@pytest.fixture
def world(console_world_factory: Any) -> ConsoleWorld:
    made: ConsoleWorld = console_world_factory(localhost=True, policy=STEP_UP_POLICY)
    return made


def test_a_stale_login_is_refused_and_a_fresh_login_counts(world: ConsoleWorld) -> None:
    created = world.server.client("agent:deploy-bot").submit("deploy.prod", params={"version": "1.2.3"})
    page = world.page()
    world.login(page, "alice", next_path=f"/console/requests/{created['id']}")
    age_sessions(world, minutes=30)

    page.reload()
    assert page.locator("#step-up").is_visible()
    page.click("#approve")
    assert "fresh login or a passkey" in page.locator("#review-error").inner_text()
    assert world.server.client("agent:deploy-bot").get(created["id"])["status"] == "pending"

    # Log in again: the provider must ask for the password again (prompt=login, max_age=0) although its
    # own session is alive, and keyturn checks the new auth_time itself.
    page.click("#fresh-login")
    idp_login(page, "alice")
    page.wait_for_url(f"{world.base}/console/requests/{created['id']}")
    page.click("#approve")
    page.locator("#decided, #review-error").first.wait_for()
    assert page.locator("#decided").count() == 1, page.locator("#review-error").inner_text()
    assert world.server.client("agent:deploy-bot").get(created["id"])["status"] == "approved"


def test_a_passkey_counts_for_step_up_even_with_a_stale_login(world: ConsoleWorld) -> None:
    page = world.page()
    world.login(page, "alice")
    virtual_authenticator(page)
    register_passkey(world, page)
    age_sessions(world, minutes=30)

    created = world.server.client("agent:deploy-bot").submit("deploy.prod", params={"version": "1.2.3"})
    page.goto(f"{world.base}/console/requests/{created['id']}")
    page.click("#approve")
    assert "fresh login or a passkey" in page.locator("#review-error").inner_text()
    page.goto(f"{world.base}/console/requests/{created['id']}")
    page.click("#approve-passkey")
    page.locator("#decided, #review-error, #passkey-error:not([hidden])").first.wait_for()
    assert page.locator("#decided").count() == 1, page.locator("main").inner_text()[:600]
    assert world.server.client("agent:deploy-bot").get(created["id"])["status"] == "approved"
