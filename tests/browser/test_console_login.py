"""Logging in to the console: OIDC (code + PKCE) against a real provider, passwords, cookies, logout, CSRF."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from keyturn.identity.users import set_user_password
from support.console import ConsoleWorld, idp_login


def test_oidc_login_lands_on_the_queue_with_a_hardened_session_cookie(world: ConsoleWorld) -> None:
    page = world.page()
    page.goto(world.server.url + "/")
    assert "/console/login" in page.url  # `/` leads to the console, which asks for a login
    page.click("#oidc-login")
    assert page.url.startswith(world.idp.issuer)  # the real provider's login form
    idp_login(page, "alice")
    page.wait_for_url(world.server.url + "/console/")
    assert page.locator("h1").inner_text() == "Review queue"
    assert "Alice" in page.locator(".me").inner_text()

    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["keyturn_session"]  # loopback dev mode: no __Host- prefix and no Secure over http
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["value"].startswith("kts_")

    # The session's principal carries how it logged in: OIDC with the provider's auth_time.
    page.goto(world.server.url + "/console/sessions")
    assert page.locator("td[data-label=Login]").first.inner_text() == "oidc"


def test_a_login_callback_is_answered_once(world: ConsoleWorld) -> None:
    page = world.page()
    page.goto(world.server.url + "/console/login")
    page.click("#oidc-login")
    callback_urls: list[str] = []
    page.on("request", lambda r: callback_urls.append(r.url) if "/console/login/callback" in r.url else None)
    idp_login(page, "alice")
    page.wait_for_url(world.server.url + "/console/")
    assert callback_urls
    # Replaying the callback (same state and code) in another browser gets no session.
    other = world.page()
    other.goto(callback_urls[0])
    assert "/console/login" in other.url
    assert "used already" in other.locator("#login-error").inner_text()


def test_unverified_email_is_refused(world: ConsoleWorld) -> None:
    page = world.page()
    page.goto(world.server.url + "/console/login")
    page.click("#oidc-login")
    idp_login(page, "mallory")
    page.wait_for_url(world.server.url + "/console/login*")
    assert "not verified" in page.locator("#login-error").inner_text()
    page.goto(world.server.url + "/console/")
    assert "/console/login" in page.url


def test_password_login_wrong_password_and_logout(world: ConsoleWorld) -> None:
    set_user_password(world.server.workdir / "users.yaml", "user:bob@example.com", "a long enough password")
    page = world.page()
    page.goto(world.server.url + "/console/login")
    page.fill("#user", "bob@example.com")
    page.fill("#password", "not the password")
    page.click("#password-login")
    assert "wrong user or password" in page.locator("#login-error").inner_text()
    page.fill("#user", "bob@example.com")
    page.fill("#password", "a long enough password")
    page.click("#password-login")
    page.wait_for_url(world.server.url + "/console/")
    cookie = next(c for c in page.context.cookies() if c["name"] == "keyturn_session")["value"]

    page.click("text=Log out")
    page.wait_for_url(world.server.url + "/console/login")
    # The row is revoked, not just the cookie dropped: the old cookie opens nothing any more.
    replay = httpx.get(world.server.url + "/console/", cookies={"keyturn_session": cookie})
    assert replay.status_code == 303
    assert replay.headers["location"].startswith("/console/login")


class _Attacker(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        body = (
            f'<form id="f" method="post" action="{self.target}/console/logout"></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_form_posted_from_another_origin_is_refused(world: ConsoleWorld) -> None:
    page = world.page()
    world.login(page, "alice")
    _Attacker.target = world.server.url
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        # Another port on 127.0.0.1 is the same *site*, so SameSite=Lax still sends the cookie: the
        # Fetch Metadata / Origin check is what refuses it.
        evil = page.context.new_page()
        response_codes: list[int] = []
        evil.on("response", lambda r: response_codes.append(r.status) if r.url.endswith("/logout") else None)
        evil.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        evil.wait_for_load_state("networkidle")
        assert response_codes == [403]
        assert "another site" in evil.content() or "another origin" in evil.content()
    finally:
        attacker.shutdown()
    page.goto(world.server.url + "/console/")
    assert page.url == world.server.url + "/console/"  # still logged in: the forged logout did nothing
