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

from keyturn.config import Settings
from keyturn.identity.authenticator import Authenticator
from keyturn.identity.sessions import ConsoleSessions, CookiePolicy, SqlConsoleRepository, cookie_policy
from keyturn.identity.users import UsersFile
from keyturn.server.console.oidc import OidcLogin, OidcLoginFlow, oidc_login_settings

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
    repository: SqlConsoleRepository  # passkeys and one-time ceremonies
    rp_id: str  # WebAuthn relying party id: the host of base_url


def build_console(
    settings: Settings, repository: SqlConsoleRepository, authenticator: Authenticator
) -> Console:
    """The console of this server. ValueError (one line) for a configuration that cannot work."""
    cookie = cookie_policy(settings.base_url, strict=False)
    parts = urlsplit(settings.base_url)
    http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
    oidc = None
    found = oidc_login_settings(settings.console, settings.issuers, settings.base_url)
    if found is not None:
        issuer, redirect_url = found
        verifier = next(v for v in authenticator.issuers if v.settings.issuer == issuer.issuer)
        secret = settings.console.client_secret
        secret_value = ""
        if secret is not None:
            secret_value = _read_secret(secret.env, secret.file)
        oidc = OidcLoginFlow(
            OidcLogin(
                issuer=issuer,
                verifier=verifier,
                client_id=settings.console.client_id or "",
                client_secret=secret_value,
                redirect_url=redirect_url,
                scopes=settings.console.scopes,
            ),
            repository,
            http,
        )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    return Console(
        sessions=ConsoleSessions(
            repository,
            idle_timeout=settings.console.idle_timeout,
            absolute_timeout=settings.console.absolute_timeout,
        ),
        cookie=cookie,
        origin=f"{parts.scheme}://{parts.netloc}",
        oidc=oidc,
        users=authenticator.users if settings.console.password_login else None,
        templates=templates,
        http=http,
        repository=repository,
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
            _read_secret(secret.env, secret.file)
    except ValueError as exc:
        return str(exc)
    return None


def _read_secret(env: str | None, file: Path | None) -> str:
    import os

    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ValueError(f"console.client_secret: environment variable {env} is not set")
        return value
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"console.client_secret: cannot read {file}: {exc.strerror}") from None
    raise ValueError("console.client_secret: give env or file")
