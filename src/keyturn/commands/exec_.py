"""`keyturn exec`: the command gate. Ask approval for one exact argv, run it once when approved.

    keyturn exec --action deploy.run --resource prod -- ./deploy.sh --fast

Exit codes (besides the command's own, passed through):
  77  not run: denied, expired, cancelled, or its grant refused (EX_NOPERM)
  69  not run: the keyturn server is unreachable; the gate fails closed (EX_UNAVAILABLE)
  75  not run: no decision within --timeout; the request was cancelled (EX_TEMPFAIL)
  65  not run: the approved params are not a runnable argv (EX_DATAERR)
  64  usage error: no command, no API key, bad option (EX_USAGE)
  1   other errors of the server (invalid request, authentication)
  126 / 127  the approved command is not executable / not found
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from types import FrameType
from typing import IO, Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from keyturn.humanize import human_duration, time_left
from keyturn.sdk import (
    ApprovalTimeout,
    ConfigurationError,
    Denied,
    Gate,
    GrantRefused,
    KeyturnError,
    Unreachable,
)

EXIT_DATAERR = 65
EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77

CONTEXT = {"allow_interspersed_args": False, "ignore_unknown_options": True}
HELP = "Run a command once a human approves that exact argv (the command gate)."

_SPOOL_IN_MEMORY = 1 << 20  # stderr is hashed after stdout; beyond 1 MiB it is spooled to a temp file
_CHUNK = 64 * 1024


def run(
    command: Annotated[list[str], typer.Argument(help="the command and its arguments, after --")],
    action: Annotated[str, typer.Option("--action", help="dotted action name, e.g. deploy.run")],
    resource: Annotated[str, typer.Option("--resource", help="what the command acts upon")] = "",
    justification: Annotated[str, typer.Option("--justification", help="why (reviewers see it)")] = "",
    on_behalf_of: Annotated[
        str | None, typer.Option("--on-behalf-of", help="the human this run is for")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.001, help="seconds to wait for a decision (then cancel)")
    ] = 3600.0,
    url: Annotated[str | None, typer.Option("--url", envvar="KEYTURN_URL", help="server URL")] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar=["KEYTURN_API_KEY", "KEYTURN_TOKEN"], help="agent API key", show_default=False
        ),
    ] = None,
) -> None:
    """Ask approval for this exact argv and working directory; run it once when approved.

    Shows who is still needed, the time left and reviewers' comments on stderr while waiting. Runs the
    approved argv (a reviewer may have edited it) with any brokered secrets in its environment,
    streams its output, reports the exit code and the SHA-256 of stdout followed by stderr, and exits
    with the command's exit code. 77: not approved (denied/expired/cancelled); 69: server unreachable;
    75: no decision within --timeout.
    """
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    if not command:
        errors.print("[red]error:[/red] no command given: keyturn exec --action A -- CMD ARGS…")
        raise typer.Exit(EXIT_USAGE)
    if not token:
        errors.print(
            "[red]error:[/red] no API key: pass --token or set KEYTURN_API_KEY "
            "(an agent key from `keyturn api-keys create`)"
        )
        raise typer.Exit(EXIT_USAGE)
    try:
        gate = Gate(url, token, timeout=timeout)
    except ConfigurationError as exc:  # the URL: the key and the timeout are checked above
        errors.print(f"[red]error:[/red] --url / KEYTURN_URL: {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from exc
    # `command` is the argv as one shell-quoted string: for reviewers' eyes and for policy conditions
    # written on a string (`params.command.contains('rm ')`); it is never run through a shell.
    params = {"argv": list(command), "cwd": os.getcwd(), "command": shlex.join(command)}
    context = {"via": "keyturn exec", "host": socket.gethostname(), "os_user": _os_user()}
    status = StatusLine(errors)
    try:
        with (
            gate,
            status,
            gate.request(
                action,
                resource=resource,
                params=params,
                justification=justification,
                context=context,
                on_behalf_of=on_behalf_of,
                on_update=status.update,
            ) as approval,
        ):
            status.close()
            argv, cwd = approved_command(params, approval.params)
            if approval.edited:
                errors.print(
                    f"[yellow]a reviewer edited the command:[/yellow] {_shown(argv)} in {escape(cwd)}"
                )
            errors.print(f"[green]✓ approved[/green] {approval.request_id}: running {_shown(argv)}")
            code, digest = execute(argv, cwd, approval.secrets)
            approval.report(code == 0, output_digest=digest, detail=f"exit code {code}")
    except Denied as denied:
        errors.print(f"[red]✗ not run[/red] ({denied.request_id}): {escape(str(denied))}")
        raise typer.Exit(EXIT_NOPERM) from None
    except GrantRefused as exc:
        errors.print(f"[red]✗ not run[/red]: the grant was refused: {escape(exc.message)}")
        raise typer.Exit(EXIT_NOPERM) from None
    except ApprovalTimeout as exc:
        errors.print(
            f"[magenta]✗ not run[/magenta] ({exc.request_id}): no decision within "
            f"{f'{timeout:g}s' if timeout < 60 else human_duration(timeout)} (--timeout); "
            "the request was cancelled"
        )
        raise typer.Exit(EXIT_TEMPFAIL) from None
    except Unreachable:
        errors.print(
            f"[red]✗ not run[/red]: cannot reach the keyturn server at {escape(gate.url)}; "
            "nothing ran (the gate fails closed)"
        )
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except UnrunnableCommand as exc:
        errors.print(f"[red]✗ not run[/red]: {escape(str(exc))}")
        raise typer.Exit(EXIT_DATAERR) from None
    except KeyturnError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        # The SDK cancelled the pending request on the way out; a running command got the signal too.
        errors.print("[red]interrupted[/red]")
        raise typer.Exit(130) from None
    raise typer.Exit(code)


class UnrunnableCommand(KeyturnError):
    """The approved params do not describe a command (a reviewer's edit broke them): nothing runs."""


def approved_command(asked: dict[str, Any], approved: dict[str, Any]) -> tuple[list[str], str]:
    """The argv and directory to run: the approved ones, with a reviewer's edit of either form applied.

    A reviewer may edit `argv` (a list) or `command` (the string form). An edited `command` is split
    with shell rules (never run by a shell); when both were edited they must agree, or nothing runs.
    """
    argv, cwd, command = approved.get("argv"), approved.get("cwd"), approved.get("command")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise UnrunnableCommand("the approved params.argv is not a non-empty list of strings")
    if not isinstance(cwd, str) or not cwd:
        raise UnrunnableCommand("the approved params.cwd is not a directory path")
    if command is not None and command != asked.get("command"):
        if not isinstance(command, str):
            raise UnrunnableCommand("the approved params.command is not a string")
        try:
            split = shlex.split(command)
        except ValueError as exc:
            raise UnrunnableCommand(f"the approved params.command cannot be split: {exc}") from None
        if argv != asked.get("argv") and argv != split:
            raise UnrunnableCommand("a reviewer edited params.argv and params.command differently")
        if not split:
            raise UnrunnableCommand("the approved params.command is empty")
        argv = split
    return argv, cwd


def _shown(argv: list[str]) -> str:
    return escape(shlex.join(argv))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


# --- running the command --------------------------------------------------------------------------------


def execute(argv: list[str], cwd: str, secrets: dict[str, str]) -> tuple[int, str]:
    """Run once, stream stdout/stderr through, return (exit code, sha256 of stdout followed by stderr).

    Secrets go into the child's environment only; they are never printed or logged here.
    """
    out_hash = hashlib.sha256()
    try:
        child = subprocess.Popen(
            argv, cwd=cwd, env={**os.environ, **secrets}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except FileNotFoundError as exc:
        print(f"keyturn exec: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 127, "sha256:" + out_hash.hexdigest()
    except (PermissionError, NotADirectoryError, OSError) as exc:
        print(f"keyturn exec: cannot run {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 126, "sha256:" + out_hash.hexdigest()
    assert child.stdout is not None and child.stderr is not None
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as err_spool:
        pumps = [
            threading.Thread(
                target=_pump, args=(child.stdout, _binary(sys.stdout), out_hash.update), daemon=True
            ),
            threading.Thread(
                target=_pump, args=(child.stderr, _binary(sys.stderr), err_spool.write), daemon=True
            ),
        ]
        for pump in pumps:
            pump.start()
        code = _wait(child)
        for pump in pumps:
            pump.join()
        err_spool.seek(0)
        while chunk := err_spool.read(_CHUNK):
            out_hash.update(chunk)
    return (128 - code if code < 0 else code), "sha256:" + out_hash.hexdigest()


def _binary(stream: IO[str]) -> IO[bytes]:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        return buffer  # type: ignore[no-any-return]
    return _TextSink(stream)  # type: ignore[return-value]


class _TextSink:
    """For a text-only stream (a test runner's capture): decode and write."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        return self.stream.write(data.decode(errors="replace"))

    def flush(self) -> None:
        self.stream.flush()


def _pump(source: IO[bytes], sink: IO[bytes], record: Any) -> None:
    while chunk := source.read1(_CHUNK) if hasattr(source, "read1") else source.read(_CHUNK):
        record(chunk)
        try:
            sink.write(chunk)
            sink.flush()
        except (OSError, ValueError):
            pass  # our own stdout went away (a closed pipe): keep hashing, the command still runs to the end


def _wait(child: subprocess.Popen[bytes]) -> int:
    """Wait for the child, passing SIGINT/SIGTERM on to it rather than abandoning it mid-run."""

    def forward(signum: int, _: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the live status ------------------------------------------------------------------------------------


class StatusLine:
    """Who is still needed, the time left and reviewers' comments, on stderr while the request is pending.

    On a terminal it is a live line (redrawn each second for the countdown); elsewhere (CI logs) one line
    per change.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.view: dict[str, Any] | None = None
        self.comments_shown = 0
        self.live: Live | None = None

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def update(self, view: dict[str, Any]) -> None:
        if self.view is None and view.get("status") == "pending":
            # Once, in full: what is asked and where a reviewer decides. The live line below stays short
            # enough for an 80-column terminal.
            self.console.print(
                f"⏳ {view.get('id')}: waiting for approval of {view.get('action')}", style="yellow"
            )
            if view.get("review_url"):
                self.console.print(f"   review: {view['review_url']}", style="dim", soft_wrap=True)
        self.view = view
        for review in (view.get("reviews") or [])[self.comments_shown :]:
            verb = "approved" if review.get("decision") == "approve" else "denied"
            comment = f": {review['comment']}" if review.get("comment") else ""
            self.console.print(f"  {review.get('reviewer')} {verb}{comment}", markup=False)
        self.comments_shown = len(view.get("reviews") or [])
        if view.get("status") != "pending":
            self.close()
            return
        if self.console.is_terminal:
            if self.live is None:
                self.live = Live(self, console=self.console, transient=True, refresh_per_second=2)
                self.live.start()
        else:
            self.console.print(self._line())

    def __rich__(self) -> RenderableType:
        return self._line()

    def _line(self) -> Text:
        """`   needs 1 from sre, 1 from security · 14m06s left`, cut with … to the terminal's width."""
        view = self.view or {}
        needed = ", ".join(view.get("still_needed") or []) or "a reviewer"
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"   needs {needed}")
        left = time_left(view.get("expires_at"))
        if left:
            line.append(f" · {left} left", style="dim")
        return line
