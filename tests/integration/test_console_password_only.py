"""A console with password login only (no OIDC issuer configured, as `make serve` runs it) serves its pages:
its Content-Security-Policy header must be a valid header value without any form target besides 'self'."""

from __future__ import annotations

from typing import Any

import httpx

from keyturn.identity.users import set_user_password


def test_pages_of_a_password_only_console_are_served(live_server: Any) -> None:
    set_user_password(live_server.workdir / "users.yaml", "user:alice@example.com", "alice's password 1")
    login = httpx.post(
        live_server.url + "/console/login",
        data={"user": "alice@example.com", "password": "alice's password 1"},
        headers={"Origin": live_server.url},
    )
    assert login.status_code == 303, login.text[:300]
    for path in ("/console/", "/console/chat-accounts", "/console/passkeys", "/console/sessions"):
        page = httpx.get(live_server.url + path, cookies=login.cookies)
        assert page.status_code == 200, (path, page.status_code)
        assert page.headers["content-security-policy"].endswith("form-action 'self'")
