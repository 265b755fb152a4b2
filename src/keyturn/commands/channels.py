"""`keyturn channels …`: check a channel's set-up, see the targets, turn a disabled one back on."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from keyturn import workflow
from keyturn.channels.base import Delivery, DeliveryFailed, DeliveryKind, MessageRef
from keyturn.channels.registry import build_channels, target_defined, target_names
from keyturn.commands._common import ConfigOption, DatabaseOption, settings
from keyturn.config import ConfigError, Settings
from keyturn.model import ActionRequest, Decision, Principal, PrincipalKind, Requirement, Route, Verdict
from keyturn.redact import UNKEYED
from keyturn.store import Store
from keyturn.store.outbox import Outbox
from keyturn.views import request_view

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


def test_view(config: Settings, target: str) -> dict[str, object]:
    """A made-up pending request, shown through the same redacted view as a real one."""
    request = ActionRequest(
        action="keyturn.test",
        resource="keyturn://channels/test",
        justification=f"`keyturn channels test {target}`: checking the set-up",
        requester=Principal(id="agent:keyturn-test", kind=PrincipalKind.AGENT),
    )
    route = Route(requirements=(Requirement(groups=("nobody",)),), ttl=timedelta(minutes=5), notify=(target,))
    verdict = Verdict(decision=Decision.REVIEW, route=route, policy_revision="test")
    now = datetime.now(UTC)
    record = workflow.submit("req_test_" + secrets.token_hex(6), request, verdict, now, "gr_test").record
    return request_view(record, base_url=config.base_url, redactor=UNKEYED)  # made-up data: no secret


@app.command("test")
def test_target(
    target: Annotated[str, typer.Argument(help="a target as a policy names it: webhook:siem, slack:#ops")],
    config: ConfigOption = None,
) -> None:
    """Send a test message to TARGET through the real channel, now (not through the outbox)."""
    loaded = settings(config, None)
    names = target_names(loaded)
    if not target_defined(target, names):
        errors.print(f"[red]{escape(target)} is not defined by channels: in the configuration[/red]")
        errors.print(f"defined: {escape(', '.join(sorted(names)) or 'none')}")
        raise typer.Exit(2)
    try:
        ref = asyncio.run(_send(loaded, target))
    except ConfigError as exc:  # a channel's credentials (Slack, Teams, a webhook's secret)
        errors.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except DeliveryFailed as exc:
        errors.print(f"[red]failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    where = f" ({escape(ref.conversation)} {escape(ref.message_id)})" if ref else ""
    console.print(f"sent a test message to {escape(target)}{where}")


async def _send(config: Settings, target: str) -> MessageRef | None:
    channels = build_channels(config)
    try:
        channel = channels.get(target.split(":", 1)[0])
        if channel is None:
            raise DeliveryFailed(
                f"no channel of kind {target.split(':', 1)[0]!r} is available", permanent=True
            )
        delivery = Delivery(
            id="msg_test_" + secrets.token_hex(12),
            kind=DeliveryKind.TEST,
            target=target,
            event_type="keyturn.test",
            view=test_view(config, target),
        )
        return await channel.post(delivery)
    finally:
        for channel in channels.values():
            await channel.aclose()


@app.command("list")
def list_targets(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """The targets the configuration defines, and those switched off by their endpoint (410 Gone)."""
    loaded = settings(config, database)
    store = Store.open(loaded.database)
    try:
        store.upgrade()
        disabled = Outbox(store).disabled_targets()
    finally:
        store.close()
    for name in sorted(target_names(loaded) | set(disabled)):
        shown = name.replace(":*", ":<any channel>")
        if name in disabled:
            at, reason = disabled[name]
            console.print(
                f"{escape(shown)}  [yellow]disabled {at.isoformat(timespec='seconds')}: {escape(reason)}[/]"
            )
        else:
            console.print(f"{escape(shown)}  enabled")


@app.command()
def enable(
    target: Annotated[str, typer.Argument(help="a target disabled by its endpoint, e.g. webhook:siem")],
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Turn a target back on after its endpoint answered 410 Gone (then `keyturn outbox retry --dead`)."""
    store = Store.open(settings(config, database).database)
    try:
        store.upgrade()
        enabled = Outbox(store).enable_target(target)
    finally:
        store.close()
    if not enabled:
        typer.echo(f"{target} is not disabled", err=True)
        raise typer.Exit(1)
    typer.echo(f"{target} is enabled; `keyturn outbox retry --dead` replays what it missed")
