"""The web console (DESIGN §3 "Web console"): server-rendered pages under /console/, sessions, login.

`build_console` wires it at start-up; `routes.router` serves it. Pages call the service (`Keyturn`) for
everything about requests and show `keyturn.views.request_view` only, never a raw record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from fastapi.templating import Jinja2Templates

from keyturn.config import ConfigError, Settings, read_secret
from keyturn.identity.authenticator import Authenticator
from keyturn.identity.sessions import ConsoleSessions, CookiePolicy, cookie_policy
from keyturn.identity.users import UsersFile
from keyturn.server.console.oidc import OidcLogin, OidcLoginFlow, oidc_login_settings
from keyturn.service import Keyturn

HERE = Path(__file__).parent


@dataclass
class Console:
    sessions: ConsoleSessions
    cookie: CookiePolicy
    origin: str  # scheme://host[:port] of base_url: what a same-origin form's Origin header says
    oidc: OidcLoginFlow | None
    users: UsersFile | None  # password login (users file), when enabled
    templates: Jinja2Templates
    http: httpx.AsyncClient
    rp_id: str  # WebAuthn relying party id: the host of base_url


def build_console(settings: Settings, svc: Keyturn, authenticator: Authenticator) -> Console:
    """The console of this server. ValueError or ConfigError (one line) for a configuration that cannot
    work."""
    cookie = cookie_policy(settings.base_url, strict=False)
    parts = urlsplit(settings.base_url)
    http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
    oidc = None
    found = oidc_login_settings(settings.console, settings.issuers, settings.base_url)
    if found is not None:
        issuer, redirect_url = found
        verifier = next(v for v in authenticator.issuers if v.settings.issuer == issuer.issuer)
        secret = settings.console.client_secret
        secret_value = "" if secret is None else read_secret(secret, "console.client_secret")
        oidc = OidcLoginFlow(
            OidcLogin(
                issuer=issuer,
                verifier=verifier,
                client_id=settings.console.client_id or "",
                client_secret=secret_value,
                redirect_url=redirect_url,
                scopes=settings.console.scopes,
            ),
            svc.accounts,
            http,
        )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    return Console(
        sessions=svc.accounts.sessions(
            idle_timeout=settings.console.idle_timeout,
            absolute_timeout=settings.console.absolute_timeout,
        ),
        cookie=cookie,
        origin=f"{parts.scheme}://{parts.netloc}",
        oidc=oidc,
        users=authenticator.users if settings.console.password_login else None,
        templates=templates,
        http=http,
        rp_id=parts.hostname or "localhost",
    )


def console_settings_problem(settings: Settings) -> str | None:
    """What is wrong with the console's settings (one line), checked before the server starts."""
    try:
        if settings.console.oidc_issuer is not None:  # a console people are meant to log in to
            cookie_policy(settings.base_url)
        found = oidc_login_settings(settings.console, settings.issuers, settings.base_url)
        secret = settings.console.client_secret
        if found is not None and secret is not None:
            read_secret(secret, "console.client_secret")
    except (ValueError, ConfigError) as exc:
        return str(exc)
    return None
