"""`keyturn serve`: check everything, bind, then serve under uvicorn (docs/operations.md, "Start-up")."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from keyturn.config import settings_help

app = typer.Typer()


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
