"""The `keyturn` command: every subcommand, put together.

Server-side commands (`serve`, `db`, `api-keys`, `signing-keys`, `users`, `ledger`) work on the
configuration and database directly; `admin` goes through a running server's admin API; the request
commands (keyturn.commands.requests: `submit`, `list`, `show`, `approve`, `deny`, `cancel`, `wait`) are
clients of a running server, authenticated with `KEYTURN_TOKEN` (a user token or an agent API key)
against `KEYTURN_URL`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from keyturn import __version__
from keyturn.commands import (
    admin,
    api_keys,
    channels,
    chat,
    db,
    exec_,
    outbox,
    policy,
    requests,
    signing_keys,
    users,
)
from keyturn.commands import hook as hook_commands
from keyturn.commands import ledger as ledger_commands
from keyturn.commands import mcp as mcp_commands
from keyturn.config import settings_help

app = typer.Typer(
    name="keyturn",
    help="Action-level approvals: the human checkpoint between what an agent intends and what it does.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(policy.app, name="policy", help="Check, explain and test policies.")
app.add_typer(db.app, name="db", help="Database schema.")
app.add_typer(api_keys.app, name="api-keys", help="Agent API keys (on the database directly).")
# The old name of `api-keys`, kept so scripts keep working; hidden so that "keys" means one thing only.
app.add_typer(api_keys.app, name="keys", hidden=True, deprecated=True)
app.add_typer(
    signing_keys.app,
    name="signing-keys",
    help="The server's signing keys (grants, ledger checkpoints): list, rotate, retire.",
)
app.add_typer(admin.app, name="admin", help="Administration through a running server (admin role).")
app.add_typer(users.app, name="users", help="Users file: humans, groups, roles, personal tokens.")
app.add_typer(ledger_commands.app, name="ledger", help="Verify, export, prove and report on the ledger.")
app.add_typer(outbox.app, name="outbox", help="Channel deliveries: list, retry dead ones.")
app.add_typer(channels.app, name="channels", help="Notification channels: test a target, enable one.")
app.add_typer(chat.app, name="chat", help="Link your Slack account to your keyturn identity.")
app.add_typer(hook_commands.app, name="hook", help="Agent hooks: `keyturn hook claude-code`.")
app.command("mcp-proxy", context_settings=mcp_commands.CONTEXT, help=mcp_commands.HELP)(
    mcp_commands.mcp_proxy
)
app.command("exec", context_settings=exec_.CONTEXT, help=exec_.HELP)(exec_.run)
app.add_typer(requests.app)  # submit, list, show, approve, deny, cancel, wait: top-level commands


def _version(shown: bool) -> None:
    if shown:
        typer.echo(f"keyturn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Action-level approvals: the human checkpoint between what an agent intends and what it does."""


@app.command(epilog=settings_help())
def serve(
    config: Annotated[Path | None, typer.Option(help="keyturn.yaml", envvar="KEYTURN_CONFIG")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [8300]")] = None,
    database: Annotated[
        str | None, typer.Option(help="sqlite:///PATH (default ./keyturn.db) or postgresql://…")
    ] = None,
    policy_files: Annotated[
        list[Path] | None, typer.Option("--policy", help="policy file (repeatable) [policy.yaml]")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="signing keys directory [keyturn-data]")] = None,
    users_file: Annotated[Path | None, typer.Option(help="users file (users, groups, roles, tokens)")] = None,
) -> None:
    """Run the server (REST API, timers, ledger checkpoints).

    Every setting can also come from keyturn.yaml or a KEYTURN_* environment variable (KEYTURN_DATABASE,
    KEYTURN_PORT, KEYTURN_LEDGER__ORIGIN…): host, port, public_url, database, policy, data_dir,
    users_file, issuers (trusted JWT issuers: issuer, audience, jwks_url, kind, groups_claim,
    subject_claim), grant_audience, timer_interval, secrets (NAME: {env|file}), ledger (origin,
    checkpoint_every, checkpoint_interval, witness_dir, witness_urls), log_level. Flags win over the
    environment, which wins over the file.
    """
    import uvicorn

    from keyturn.config import ConfigError, load_settings
    from keyturn.server.app import create_app
    from keyturn.server.run import uvicorn_options
    from keyturn.server.startup import StartupError, bind, prepare

    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            database=database,
            policy=policy_files,
            data_dir=data_dir,
            users_file=users_file,
        )
        application = create_app(settings)  # checks channel credentials: a missing one is a ConfigError
    except ConfigError as exc:
        _startup_failed(f"configuration: {exc}")
    from keyturn.server.console import console_settings_problem

    problem = console_settings_problem(settings)
    if problem is not None:
        _startup_failed(f"configuration: {problem}")
    # The order makes a failed start create nothing: the socket first (a port in use is found before any
    # file is written), then the checks, and the database and keys last.
    try:
        sock = bind(settings.host, settings.port)
        application.state.components = prepare(settings)
    except StartupError as exc:
        with contextlib.suppress(NameError):
            sock.close()
        _startup_failed(str(exc))
    options = {k: v for k, v in uvicorn_options(settings).items() if k not in ("host", "port")}
    server = uvicorn.Server(
        uvicorn.Config(
            application, ssl_certfile=settings.tls_certfile, ssl_keyfile=settings.tls_keyfile, **options
        )
    )
    server.run(sockets=[sock])


def _startup_failed(message: str) -> NoReturn:
    """A start-up problem: one line on stderr (no rich wrapping, no traceback), exit status 2."""
    one_line = " ".join(message.split())
    sys.stderr.write(f"keyturn serve: {one_line}\n")
    raise typer.Exit(2)


def main() -> None:
    app(prog_name="keyturn")


if __name__ == "__main__":
    main()
