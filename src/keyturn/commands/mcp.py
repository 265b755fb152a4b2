"""`keyturn mcp-proxy`: put keyturn approvals in front of any MCP server with one line of configuration."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from keyturn.commands.output import errors, failure

HELP = """Serve MCP to an agent, forwarding to an upstream MCP server, with every tool call gated by keyturn.

Each tools/call becomes the action mcp.NAME.TOOL with the arguments as params. Allowed calls pass, reviewed
calls wait for approval (sending MCP progress notifications), denied ones return an isError result with the
reason. The proxy authenticates to keyturn with the agent API key in $KEYTURN_API_KEY (or --api-key-env).
It serves MCP over stdio, or over streamable HTTP at http://HOST:PORT/mcp with --listen; HTTP clients must
then send Authorization: Bearer TOKEN, the token coming from $KEYTURN_MCP_PROXY_TOKEN (or --listen-token-env,
or --listen-token-file); without one the proxy generates a token and prints it once on stderr.

Example: keyturn mcp-proxy --name git -- uvx mcp-server-git --repository .

Example: keyturn mcp-proxy --name notes --upstream-url https://notes.example.com/mcp
--upstream-header 'Authorization: Bearer …'
"""

CONTEXT = {"allow_interspersed_args": False, "help_option_names": ["-h", "--help"]}


def _listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise failure(f"--listen expects HOST:PORT (e.g. 127.0.0.1:8765), got {value!r}")
    return host.strip("[]"), int(port)


MIN_TOKEN_LENGTH = 16


def _listen_token(env: str, file: Path | None) -> str:
    """The bearer token HTTP clients of `--listen` must send: from a file, the environment, or generated."""
    if file is not None:
        try:
            token = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise failure(f"--listen-token-file {file}: {exc.strerror or exc}") from exc
        source = str(file)
    else:
        token = os.environ.get(env, "").strip()
        source = f"${env}"
        if not token:
            token = secrets.token_urlsafe(32)
            errors.print(
                f"keyturn mcp-proxy: no ${env} set; MCP clients must send this header"
                f" (shown once):\nAuthorization: Bearer {token}",
                highlight=False,
                soft_wrap=True,
            )
            return token
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise failure(
            f"the --listen token from {source} must be at least {MIN_TOKEN_LENGTH} characters, no spaces"
        )
    return token


def mcp_proxy(
    upstream_command: Annotated[
        list[str] | None, typer.Argument(help="the upstream MCP server command, after --", show_default=False)
    ] = None,
    name: Annotated[str, typer.Option("--name", help="server name: actions are mcp.NAME.TOOL")] = "",
    gate: Annotated[
        str | None,
        typer.Option("--gate", envvar="KEYTURN_URL", help="keyturn server URL [http://127.0.0.1:8300]"),
    ] = None,
    api_key_env: Annotated[
        str, typer.Option("--api-key-env", help="environment variable holding the agent API key")
    ] = "KEYTURN_API_KEY",
    hide_denied: Annotated[
        bool, typer.Option("--hide-denied", help="leave out of tools/list the tools policy denies outright")
    ] = False,
    listen: Annotated[
        str | None, typer.Option("--listen", help="serve streamable HTTP on HOST:PORT instead of stdio")
    ] = None,
    listen_token_env: Annotated[
        str,
        typer.Option("--listen-token-env", help="environment variable holding the bearer token for --listen"),
    ] = "KEYTURN_MCP_PROXY_TOKEN",
    listen_token_file: Annotated[
        Path | None,
        typer.Option("--listen-token-file", help="file holding the bearer token for --listen"),
    ] = None,
    upstream_url: Annotated[
        str | None, typer.Option("--upstream-url", help="a streamable-HTTP upstream instead of a command")
    ] = None,
    upstream_header: Annotated[
        list[str] | None, typer.Option("--upstream-header", help="'Name: value' sent to the HTTP upstream")
    ] = None,
    upstream_env: Annotated[
        list[str] | None, typer.Option("--upstream-env", help="NAME=value for the upstream process")
    ] = None,
    on_behalf_of: Annotated[
        str | None,
        typer.Option("--on-behalf-of", help="the human the agent acts for, e.g. user:ann@example.com"),
    ] = None,
    progress_interval: Annotated[
        float, typer.Option("--progress-interval", min=0.05, help="seconds between progress notifications")
    ] = 5.0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="longest wait for a decision, in seconds")
    ] = 3600.0,
    log_level: Annotated[str, typer.Option("--log-level", help="logging level on stderr")] = "warning",
) -> None:
    """Serve MCP to an agent with every tool call gated by keyturn (see --help)."""
    import anyio

    from keyturn.mcp import ProxySettings, run_proxy
    from keyturn.mcp.naming import InvalidServerName, check_server_name
    from keyturn.mcp.upstream import HttpUpstream, StdioUpstream, UpstreamError, parse_env, parse_header

    logging.basicConfig(level=log_level.upper(), format="keyturn mcp-proxy %(levelname)s %(message)s")
    if not name:
        raise failure("--name is required: it names the actions mcp.NAME.TOOL")
    try:
        check_server_name(name)
        if upstream_url and upstream_command:
            raise failure("give either an upstream command after -- or --upstream-url, not both")
        if upstream_url:
            if upstream_env:
                raise failure(
                    "--upstream-env applies to an upstream command; use --upstream-header for a URL"
                )
            upstream: StdioUpstream | HttpUpstream = HttpUpstream(
                upstream_url, dict(parse_header(h) for h in upstream_header or [])
            )
        elif upstream_command:
            if upstream_header:
                raise failure("--upstream-header applies to --upstream-url; use --upstream-env for a command")
            upstream = StdioUpstream(
                upstream_command[0],
                tuple(upstream_command[1:]),
                dict(parse_env(e) for e in upstream_env or []),
            )
        else:
            raise failure("no upstream: give the MCP server command after --, or --upstream-url URL")
    except (ValueError, InvalidServerName) as exc:
        raise failure(str(exc)) from exc
    api_key = os.environ.get(api_key_env)
    if not api_key:
        raise failure(f"no keyturn API key: set ${api_key_env} (an agent key from `keyturn api-keys create`)")
    token = _listen_token(listen_token_env, listen_token_file) if listen else ""
    settings = ProxySettings(
        name=name,
        upstream=upstream,
        gate_url=gate or "http://127.0.0.1:8300",
        api_key=api_key,
        hide_denied=hide_denied,
        listen=_listen_address(listen) if listen else None,
        listen_token=token,
        on_behalf_of=on_behalf_of,
        progress_interval=progress_interval,
        timeout=timeout,
    )
    try:
        anyio.run(run_proxy, settings)
    except UpstreamError as exc:
        raise failure(str(exc), code=1) from exc
    except KeyboardInterrupt:
        pass
