"""How every `keyturn` command speaks: one error line on stderr, statuses in colour, times for people.

Errors are `error: <what is wrong>` (and a dim hint line where one helps); usage errors exit 2, refusals
and failures of the server 1 (`keyturn exec` has its own documented codes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from keyturn.client import ApiError

console = Console()
errors = Console(stderr=True, highlight=False, soft_wrap=True)  # an error line is copied, not reflowed

USAGE = 2
FAILED = 1

_STATUS_COLOUR = {
    "pending": "yellow",
    "approved": "green",
    "allowed": "green",
    "succeeded": "green",
    "executing": "cyan",
    "denied": "red",
    "failed": "red",
    "expired": "magenta",
    "cancelled": "dim",
}


def failure(message: str, code: int = USAGE, hint: str | None = None) -> typer.Exit:
    """Print `error: message` (and a hint) on stderr; raise what it returns (`raise failure(…) from exc`)."""
    errors.print(f"[red]error:[/red] {escape(message)}")
    if hint:
        errors.print(f"[dim]{escape(hint)}[/dim]")
    return typer.Exit(code)


def die(message: str, code: int = USAGE, hint: str | None = None) -> NoReturn:
    """Print `error: message` (and a hint) on stderr and stop with `code`."""
    raise failure(message, code, hint)


def api_failure(exc: ApiError) -> NoReturn:
    """The server refused or failed: its message, its code, and what that can mean here."""
    hint = None
    if exc.code == "not_found" and "no request" in exc.message:
        # The server answers "absent" and "not yours" alike (ids are no oracle); say what that can mean.
        hint = (
            "it does not exist, or this token is not its requester, an approver in one of its groups "
            "or an auditor"
        )
    elif exc.code == "unauthenticated":
        hint = (
            "pass --token or set KEYTURN_TOKEN (a user token from `keyturn users add-token`, "
            "or an agent key from `keyturn api-keys create`)"
        )
    elif exc.code == "step_up_required":
        hint = "open the request in the web console, which asks for a fresh login or a passkey"
    die(f"{exc.message} ({exc.code})", FAILED, hint)


def styled_status(value: str) -> str:
    colour = _STATUS_COLOUR.get(value, "white")
    return f"[{colour}]{value}[/{colour}]"
