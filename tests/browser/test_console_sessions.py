"""Sessions are rows shared by every replica: revoked on one, refused on the other at once."""

from __future__ import annotations

from typing import Any

import pytest

from support.console import ConsoleWorld


@pytest.mark.postgresql
def test_a_session_revoked_on_one_replica_is_refused_on_the_other(
    console_world_factory: Any, postgres_url: str
) -> None:
    world: ConsoleWorld = console_world_factory(database_url=postgres_url)
    replica = world.server.start_replica(port=world.replica_port)

    alice = world.page()
    world.login(alice, "alice")
    # The cookie is for 127.0.0.1 (any port), so the same browser session reaches the replica.
    alice.goto(replica.url + "/console/")
    assert alice.url == replica.url + "/console/"

    # Alice, in a second browser, ends her first session from the sessions page of the *first* server.
    other = world.page()
    world.login(other, "alice")
    other.goto(world.server.url + "/console/sessions")
    rows = other.locator("tr[data-session]")
    assert rows.count() == 2
    first = rows.filter(has_not_text="this one")
    first.locator("button").click()
    other.wait_for_url(world.server.url + "/console/sessions")
    assert other.locator("tr[data-session]").count() == 1

    alice.goto(replica.url + "/console/")
    assert "/console/login" in alice.url
    assert "ended" in alice.locator("#login-error").inner_text()
    other.goto(replica.url + "/console/")  # the session that did the revoking still works there
    assert other.url == replica.url + "/console/"


def test_an_admin_sees_and_ends_anyones_session_a_user_only_their_own(world: ConsoleWorld) -> None:
    from keyturn.identity.users import set_user_password

    set_user_password(world.server.workdir / "users.yaml", "user:frank@example.com", "frank the admin 123")
    alice = world.page()
    world.login(alice, "alice")
    bob = world.page()
    world.login(bob, "bob")
    # Bob sees only his own session.
    bob.goto(world.server.url + "/console/sessions")
    assert bob.locator("tr[data-session]").count() == 1

    frank = world.page()
    frank.goto(world.server.url + "/console/login")
    frank.fill("#user", "frank@example.com")
    frank.fill("#password", "frank the admin 123")
    frank.click("#password-login")
    frank.wait_for_url(world.server.url + "/console/")
    frank.goto(world.server.url + "/console/sessions")
    alices = frank.locator("tr[data-session]", has_text="user:alice@example.com")
    assert alices.count() == 1
    alices.locator("button").click()
    frank.wait_for_url(world.server.url + "/console/sessions")
    alice.goto(world.server.url + "/console/")
    assert "/console/login" in alice.url
    bob.goto(world.server.url + "/console/")
    assert bob.url == world.server.url + "/console/"
