"""The request commands: clients of a running server (`KEYTURN_URL`), as a requester or a reviewer.

`submit`, `list`, `show`, `approve`, `deny`, `cancel` and `wait` authenticate with `KEYTURN_TOKEN` (a
user token from the users file, an OIDC token) or `KEYTURN_API_KEY` (an agent's key). They show what the
server's redacted view of a request says, nothing more.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from keyturn.client import ApiError, Client, default_url
from keyturn.commands.output import api_failure, console, die, errors, styled_status
from keyturn.humanize import clock, time_left

app = typer.Typer()

UrlOption = Annotated[str, typer.Option("--url", envvar="KEYTURN_URL", help="server URL")]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=["KEYTURN_TOKEN", "KEYTURN_API_KEY"],
        help="user token (keyturn users add-token) or agent API key (keyturn api-keys create)",
    ),
]


def _client(url: str, token: str | None) -> Client:
    return Client(url, token)


def _json_object(text: str, option: str, example: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        die(f"{option} is not JSON: {exc}")
    if not isinstance(parsed, dict):
        die(f"{option} must be a JSON object, e.g. '{example}'")
    return parsed


@app.command()
def submit(
    action: Annotated[str, typer.Argument(help="dotted action name, e.g. db.export")],
    resource: Annotated[str, typer.Option(help="the resource acted upon")] = "",
    params: Annotated[str, typer.Option(help="params as a JSON object")] = "{}",
    justification: Annotated[str, typer.Option(help="why")] = "",
    context: Annotated[
        str, typer.Option(help="context as a JSON object: ticket, environment, model, trace id…")
    ] = "{}",
    on_behalf_of: Annotated[str | None, typer.Option(help="the human this agent acts for")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="retries with the same key get one request")
    ] = None,
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """Submit an action request and print the answer as JSON."""
    parsed = _json_object(params, "--params", '{"rows": 10}')
    parsed_context = _json_object(context, "--context", '{"ticket": "OPS-42"}')
    try:
        with _client(url, token) as client:
            answer = client.submit(
                action,
                resource,
                parsed,
                justification=justification,
                context=parsed_context,
                on_behalf_of=on_behalf_of,
                idempotency_key=idempotency_key,
            )
    except ApiError as exc:
        api_failure(exc)
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
        api_failure(exc)
    items = page["items"]
    if not items:
        console.print("nothing to review" if reviewable else "no requests")
        return
    # One block per request rather than a table: ids are never truncated (they are copied into `keyturn
    # approve`) and resources run long, so columns would be unreadable on an 80-column terminal.
    for item in items:
        head = f"[bold]{escape(item['id'])}[/bold]  {styled_status(item['status'])}  {escape(item['action'])}"
        if item["status"] == "pending":
            head += f"  [dim]{time_left(item['expires_at']) or '-'} left[/dim]"
        console.print(head)
        if item["resource"]:
            console.print(f"    {escape(item['resource'])}", overflow="fold")
        who = item["requester"]["id"] + (f" for {item['on_behalf_of']}" if item["on_behalf_of"] else "")
        needs = ", ".join(item["still_needed"])
        console.print(
            f"    [dim]by[/dim] {escape(who)}" + (f"  [dim]needs[/dim] {escape(needs)}" if needs else "")
        )
    if page.get("next_cursor"):
        console.print(f"[dim]… more: raise --limit (now {limit})[/dim]")


@app.command()
def show(request_id: str, url: UrlOption = default_url(), token: TokenOption = None) -> None:
    """Show one request: full context, route, reviews and history."""
    try:
        with _client(url, token) as client:
            item = client.get(request_id)
    except ApiError as exc:
        api_failure(exc)
    verdict = item["verdict"]
    console.print(f"[bold]{item['id']}[/bold]  {styled_status(item['status'])}")
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
            f"{clock(item['expires_at'])} ({time_left(item['expires_at'])})"
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
            str(event["seq"]), clock(str(event["ts"])), event["type"], event["actor"], escape(str(detail))
        )
    console.print(history)


def _review(
    request_id: str, decision: str, comment: str, sets: list[str] | None, url: str, token: str | None
) -> None:
    changes: dict[str, Any] | None = None
    for assignment in sets or []:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            die(f"--set expects param=value, got {assignment!r}")
        changes = changes or {}
        _assign(changes, key.removeprefix("params."), _parse_value(raw))
    try:
        with _client(url, token) as client:
            answer = client.review(request_id, decision, comment, changes)
    except ApiError as exc:
        api_failure(exc)
    still = ", ".join(answer["still_needed"])
    console.print(
        f"{answer['id']}: {styled_status(answer['status'])}" + (f" — still needed: {still}" if still else "")
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
        api_failure(exc)
    console.print(f"{answer['id']}: {styled_status(answer['status'])}")


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
                    f" — {time_left(item['expires_at']) or '-'} left"
                )
                item = client.wait(request_id, timeout=min(5.0, max(0.0, deadline - time.monotonic())))
    except ApiError as exc:
        api_failure(exc)
    console.print(f"{request_id}: {styled_status(item['status'])}")
    for entry in item["reviews"]:
        if entry["comment"]:
            console.print(f"  {entry['reviewer']} ({entry['decision']}): {entry['comment']}")
    if item["status"] == "pending":
        errors.print(f"still pending after {timeout:g}s; waiting on {', '.join(item['still_needed']) or '…'}")
        raise typer.Exit(3)
    raise typer.Exit(0 if item["status"] in ("approved", "allowed", "executing", "succeeded") else 1)


def _rules(verdict: dict[str, Any]) -> str:
    return ", ".join(r["rule"] for r in verdict["rules"]) or "none matched: the policy default"


def _requirement(requirement: dict[str, Any]) -> str:
    return f"{requirement['count']} from {' or '.join(requirement['groups'])}"


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
