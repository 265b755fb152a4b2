"""The `keyturn` command.

Server-side commands (`serve`, `db`, `keys`) work on the configuration and database directly; the request
commands (`submit`, `list`, `show`, `approve`, `deny`, `cancel`, `wait`) are clients of a running server,
authenticated with `KEYTURN_TOKEN` (a user token or an agent API key) against `KEYTURN_URL`.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from keyturn.client import ApiError, Client, default_url
from keyturn.commands import channels, db, exec_, keys, outbox, policy, users
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
app.add_typer(keys.app, name="keys", help="Agent API keys.")
app.add_typer(users.app, name="users", help="Users file: humans, groups, roles, personal tokens.")
app.add_typer(ledger_commands.app, name="ledger", help="Verify, export, prove and report on the ledger.")
app.add_typer(outbox.app, name="outbox", help="Channel deliveries: list, retry dead ones.")
app.add_typer(channels.app, name="channels", help="Notification channels: test a target, enable one.")
app.add_typer(hook_commands.app, name="hook", help="Agent hooks: `keyturn hook claude-code`.")
app.command("mcp-proxy", context_settings=mcp_commands.CONTEXT, help=mcp_commands.HELP)(
    mcp_commands.mcp_proxy
)
app.command("exec", context_settings=exec_.CONTEXT, help=exec_.HELP)(exec_.run)

console = Console()
errors = Console(stderr=True)

UrlOption = Annotated[str, typer.Option("--url", envvar="KEYTURN_URL", help="server URL")]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=["KEYTURN_TOKEN", "KEYTURN_API_KEY"],
        help="user token (keyturn users add-token) or agent API key (keyturn keys create)",
    ),
]


def _client(url: str, token: str | None) -> Client:
    return Client(url, token)


def _fail(exc: ApiError) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape(exc.message)} [dim]({exc.code})[/dim]")
    if exc.code == "not_found" and "no request" in exc.message:
        # The server answers "absent" and "not yours" alike (ids are no oracle); say what that can mean.
        errors.print(
            "[dim]it does not exist, or this token is not its requester, an approver in one of its groups "
            "or an auditor[/dim]"
        )
    elif exc.code == "unauthenticated":
        errors.print(
            "[dim]pass --token or set KEYTURN_TOKEN (a user token from `keyturn users add-token`, "
            "or an agent key from `keyturn keys create`)[/dim]"
        )
    return typer.Exit(1)


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
    except ConfigError as exc:
        errors.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )


@app.command()
def submit(
    action: Annotated[str, typer.Argument(help="dotted action name, e.g. db.export")],
    resource: Annotated[str, typer.Option(help="the resource acted upon")] = "",
    params: Annotated[str, typer.Option(help="params as a JSON object")] = "{}",
    justification: Annotated[str, typer.Option(help="why")] = "",
    on_behalf_of: Annotated[str | None, typer.Option(help="the human this agent acts for")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="retries with the same key get one request")
    ] = None,
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """Submit an action request and print the answer as JSON."""
    try:
        parsed = json.loads(params)
    except json.JSONDecodeError as exc:
        errors.print(f"[red]error:[/red] --params is not JSON: {exc}")
        raise typer.Exit(2) from exc
    if not isinstance(parsed, dict):
        errors.print("[red]error:[/red] --params must be a JSON object, e.g. '{\"rows\": 10}'")
        raise typer.Exit(2)
    try:
        with _client(url, token) as client:
            answer = client.submit(
                action,
                resource,
                parsed,
                justification=justification,
                on_behalf_of=on_behalf_of,
                idempotency_key=idempotency_key,
            )
    except ApiError as exc:
        raise _fail(exc) from exc
    console.print_json(data=answer)


@app.command("list")
def list_requests(
    status: Annotated[str | None, typer.Option(help="pending, approved, denied, …")] = None,
    reviewable: Annotated[bool, typer.Option(help="only what I can review now")] = False,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """List requests (the review queue with --reviewable)."""
    try:
        with _client(url, token) as client:
            page = client.list(status=status, reviewable=reviewable, limit=limit)
    except ApiError as exc:
        raise _fail(exc) from exc
    table = Table(title="keyturn requests")
    table.add_column("id", no_wrap=True)  # ids are copied into `keyturn approve`: never truncate them
    table.add_column("status", no_wrap=True)
    for column in ("action", "resource", "requester", "needs", "expires in"):
        table.add_column(column, overflow="fold")
    for item in page["items"]:
        table.add_row(
            item["id"],
            _status(item["status"]),
            item["action"],
            item["resource"],
            item["requester"]["id"] + (f" for {item['on_behalf_of']}" if item["on_behalf_of"] else ""),
            ", ".join(item["still_needed"]),
            _time_left(item["expires_at"]) if item["status"] == "pending" else "",
        )
    console.print(table)


@app.command()
def show(request_id: str, url: UrlOption = default_url(), token: TokenOption = None) -> None:
    """Show one request: full context, route, reviews and history."""
    try:
        with _client(url, token) as client:
            item = client.get(request_id)
    except ApiError as exc:
        raise _fail(exc) from exc
    verdict = item["verdict"]
    console.print(f"[bold]{item['id']}[/bold]  {_status(item['status'])}")
    rows = [
        ("action", item["action"]),
        ("resource", item["resource"]),
        ("requester", item["requester"]["id"] + f" ({item['requester']['kind']})"),
        ("on behalf of", item["on_behalf_of"] or "-"),
        ("justification", item["justification"] or "-"),
        (
            "decision",
            f"{verdict['decision']} (rules: {_rules(verdict)})",
        ),
        ("tier", verdict["tier"] or "-"),
        ("requires", " and ".join(_requirement(r) for r in verdict["requirements"]) or "-"),
        ("still needed", ", ".join(item["still_needed"]) or "-"),
        ("editable", ", ".join(verdict["editable"]) or "-"),
        (
            "expires",
            f"{_clock(item['expires_at'])} ({_time_left(item['expires_at'])})"
            if item["expires_at"] and item["status"] == "pending"
            else "-",
        ),
        ("policy", verdict["policy_revision"]),
    ]
    table = Table(show_header=False, box=None)
    for key, value in rows:
        table.add_row(f"[dim]{key}[/dim]", escape(str(value)))
    console.print(table)
    console.print("[bold]params[/bold]")
    console.print_json(data=item["params"])
    if item["approved_params"] is not None and item["approved_params"] != item["params"]:
        console.print("[bold]approved params (edited)[/bold]")
        console.print_json(data=item["approved_params"])
    history = Table(title="history")
    history.add_column("seq", no_wrap=True)
    history.add_column("time (UTC)", no_wrap=True)
    history.add_column("event", no_wrap=True)
    for column in ("actor", "detail"):
        history.add_column(column, overflow="fold")
    for event in item.get("history", []):
        detail = event["payload"].get("comment") or event["payload"].get("reason") or ""
        history.add_row(
            str(event["seq"]), _clock(str(event["ts"])), event["type"], event["actor"], escape(str(detail))
        )
    console.print(history)


def _review(
    request_id: str, decision: str, comment: str, sets: list[str] | None, url: str, token: str | None
) -> None:
    changes: dict[str, Any] | None = None
    for assignment in sets or []:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            errors.print(f"[red]error:[/red] --set expects param=value, got {assignment!r}")
            raise typer.Exit(2)
        changes = changes or {}
        _assign(changes, key.removeprefix("params."), _parse_value(raw))
    try:
        with _client(url, token) as client:
            answer = client.review(request_id, decision, comment, changes)
    except ApiError as exc:
        raise _fail(exc) from exc
    still = ", ".join(answer["still_needed"])
    console.print(
        f"{answer['id']}: {_status(answer['status'])}" + (f" — still needed: {still}" if still else "")
    )


@app.command()
def approve(
    request_id: str,
    comment: Annotated[str, typer.Option(help="why you approve")] = "",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="narrow an editable param: rows=500 (repeatable)")
    ] = None,
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """Approve a pending request, optionally narrowing editable params."""
    _review(request_id, "approve", comment, set_, url, token)


@app.command()
def deny(
    request_id: str,
    reason: Annotated[str, typer.Option(help="why (required; the agent sees it)")],
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """Deny a pending request."""
    _review(request_id, "deny", reason, None, url, token)


@app.command()
def cancel(
    request_id: str,
    reason: Annotated[str, typer.Option(help="why")] = "",
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """Cancel your own pending request."""
    try:
        with _client(url, token) as client:
            answer = client.cancel(request_id, reason)
    except ApiError as exc:
        raise _fail(exc) from exc
    console.print(f"{answer['id']}: {_status(answer['status'])}")


@app.command()
def wait(
    request_id: str,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 3600.0,
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """Wait for a decision, showing who is still needed and the time left.

    Exit status: 0 approved or allowed (may run); 1 denied, expired or cancelled; 3 still pending when the
    timeout ran out (so a script can tell "no" from "no answer yet").
    """
    deadline = time.monotonic() + timeout
    try:
        with _client(url, token) as client, Live(console=console, transient=True) as live:
            item = client.get(request_id)
            while item["status"] == "pending" and time.monotonic() < deadline:
                live.update(
                    f"[yellow]⏳ {request_id}[/yellow] waiting on {', '.join(item['still_needed']) or '…'}"
                    f" — {_time_left(item['expires_at'])} left"
                )
                item = client.wait(request_id, timeout=min(5.0, max(0.0, deadline - time.monotonic())))
    except ApiError as exc:
        raise _fail(exc) from exc
    console.print(f"{request_id}: {_status(item['status'])}")
    for entry in item["reviews"]:
        if entry["comment"]:
            console.print(f"  {entry['reviewer']} ({entry['decision']}): {entry['comment']}")
    if item["status"] == "pending":
        errors.print(f"still pending after {timeout:g}s; waiting on {', '.join(item['still_needed']) or '…'}")
        raise typer.Exit(3)
    raise typer.Exit(0 if item["status"] in ("approved", "allowed", "executing", "succeeded") else 1)


def _status(status: str) -> str:
    colour = {
        "pending": "yellow",
        "approved": "green",
        "allowed": "green",
        "succeeded": "green",
        "executing": "cyan",
        "denied": "red",
        "failed": "red",
        "expired": "magenta",
        "cancelled": "dim",
    }.get(status, "white")
    return f"[{colour}]{status}[/{colour}]"


def _rules(verdict: dict[str, Any]) -> str:
    return ", ".join(r["rule"] for r in verdict["rules"]) or "none matched: the policy default"


def _clock(timestamp: str) -> str:
    """`2026-11-23 06:22:14` (UTC): the moment, without microseconds and offset noise."""
    try:
        return (
            datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
            .astimezone(UTC)
            .strftime("%Y-%m-%d %H:%M:%S")
        )
    except ValueError:
        return timestamp


def _requirement(requirement: dict[str, Any]) -> str:
    return f"{requirement['count']} from {' or '.join(requirement['groups'])}"


def _time_left(expires_at: str | None) -> str:
    if not expires_at:
        return "-"
    seconds = int((datetime.fromisoformat(expires_at) - datetime.now(UTC)).total_seconds())
    if seconds <= 0:
        return "expired"
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _assign(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def main() -> None:
    app(prog_name="keyturn")


if __name__ == "__main__":
    main()
