"""`keyturn outbox …`: what the channels owe, what died, and replaying it (docs/channels.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from keyturn.commands._common import ConfigOption, DatabaseOption, settings
from keyturn.store import Store
from keyturn.store.outbox import DEAD, STATUSES, Outbox

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)


def _open(config: ConfigOption, database: DatabaseOption) -> Store:
    store = Store.open(settings(config, database).database)
    store.upgrade()
    return store


@app.command("list")
def list_rows(
    dead: Annotated[bool, typer.Option("--dead", help="only the rows that gave up (status dead)")] = False,
    status: Annotated[str | None, typer.Option(help=f"only this status: {', '.join(STATUSES)}")] = None,
    request: Annotated[str | None, typer.Option(help="only the rows of this request")] = None,
    limit: Annotated[int, typer.Option(min=1, help="newest first, at most this many")] = 50,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """List outbox rows, newest first: id (the webhook-id), request, kind, target, status, attempts, error."""
    if status is not None and status not in STATUSES:
        typer.echo(f"--status: {status!r} is not one of {', '.join(STATUSES)}", err=True)
        raise typer.Exit(2)
    store = _open(config, database)
    try:
        outbox = Outbox(store)
        rows = outbox.list_rows(status=DEAD if dead else status, request_id=request, limit=limit)
        counts = outbox.count_by_status()
        disabled = outbox.disabled_targets()
    finally:
        store.close()
    # One line per row (greppable, never truncated to the terminal's width), the last error under it.
    for row in rows:
        due = f"  due {row.due_at.isoformat(timespec='seconds')}" if row.status == "pending" else ""
        console.print(
            f"{row.id}  {row.status:<9} attempts {row.attempts:<2} {row.kind:<8} {escape(row.target)}"
            f"  {row.event_type}  {row.request_id}{due}",
            soft_wrap=True,
        )
        if row.last_error:
            console.print(f"    last error: {escape(row.last_error)}", soft_wrap=True)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "the outbox is empty")
    for target, (at, reason) in sorted(disabled.items()):
        console.print(
            f"[yellow]{escape(target)} is disabled since {at.isoformat(timespec='seconds')}: {escape(reason)}"
            f" (keyturn channels enable {escape(target)})[/yellow]",
            soft_wrap=True,
        )


@app.command()
def retry(
    ids: Annotated[list[str] | None, typer.Argument(help="row ids (from `keyturn outbox list`)")] = None,
    dead: Annotated[bool, typer.Option("--dead", help="every dead row")] = False,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Deliver dead (or cancelled) rows again now, with their own ids: a receiver recognises a replay."""
    if bool(ids) == dead:
        typer.echo("give row ids or --dead (not both)", err=True)
        raise typer.Exit(2)
    store = _open(config, database)
    try:
        outbox = Outbox(store)
        now = datetime.now(UTC)
        if dead:
            count = outbox.retry_dead(now)
        else:
            missing = [i for i in ids or [] if outbox.get(i) is None]
            if missing:
                typer.echo(f"no outbox row {', '.join(missing)}", err=True)
                raise typer.Exit(1)
            count = outbox.retry(ids or [], now)
        disabled = outbox.disabled_targets()
    finally:
        store.close()
    typer.echo(f"{count} row{'s' if count != 1 else ''} due again; a running server delivers them now")
    if disabled:
        typer.echo(
            f"note: disabled targets stay disabled ({', '.join(sorted(disabled))}): "
            "keyturn channels enable TARGET first",
            err=True,
        )
