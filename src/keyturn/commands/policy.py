"""`keyturn policy …`: check, explain and test policies without a server.

Exit codes: 0 success, 1 the policy (or a test) fails, 2 bad input to the command itself (a request or
cases file that does not parse, a bad --now).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from keyturn.policy import CompiledPolicy, PolicyError, load_policy
from keyturn.policy.cases import CaseResult, load_cases, load_request, run_cases
from keyturn.policy.explain import explanation_as_dict, print_explanation

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

Files = Annotated[list[Path], typer.Argument(help="policy files, loaded together as one policy")]


def _load(files: list[Path], config: Path | None = None) -> CompiledPolicy:
    targets = None
    if config is not None:
        from keyturn.channels.registry import target_names
        from keyturn.commands._common import settings

        targets = target_names(settings(config, None))
    try:
        return load_policy(files, targets=targets)
    except PolicyError as exc:
        _print_problems(exc)
        raise typer.Exit(1) from None


def _print_problems(exc: PolicyError) -> None:
    for problem in exc.problems:
        errors.print(f"[red]{escape(str(problem))}[/red]", soft_wrap=True)  # one line per problem
    count = len(exc.problems)
    errors.print(f"{count} problem{'s' if count != 1 else ''}")


@app.command()
def check(
    files: Files,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="KEYTURN_CONFIG",
            help="keyturn.yaml: also check that every notify target is one its `channels:` defines",
        ),
    ] = None,
) -> None:
    """Validate policy files: print `OK: N rules, revision …` or every problem as file:line:column.

    Without --config the policy is checked on its own: notify targets are not checked against a server
    configuration (the server does that when it loads the policy)."""
    policy = _load(files, config)
    console.print(f"OK: {len(policy.rules)} rules, revision {policy.revision}", soft_wrap=True)


@app.command()
def explain(
    files: Files,
    request: Annotated[Path, typer.Option("--request", help="request JSON: action, resource, params, …")],
    now: Annotated[str | None, typer.Option(help="evaluate at this ISO 8601 time (default: now)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the explanation as JSON")] = False,
) -> None:
    """Show every rule with whether it matched and why, then the verdict and its route."""
    policy = _load(files)
    at = _parse_now(now)
    try:
        action_request = load_request(request)
    except PolicyError as exc:
        _print_problems(exc)
        raise typer.Exit(2) from None
    explanation = policy.explain(action_request, at)
    if as_json:
        console.print_json(json.dumps(explanation_as_dict(explanation)))
    else:
        print_explanation(console, action_request, explanation)


@app.command("test")
def test_cases(
    files: Files,
    cases: Annotated[Path, typer.Option("--cases", help="YAML file of cases: request → expected verdict")],
) -> None:
    """Run policy test cases; print each failure with expected vs actual, then `N passed, N failed`."""
    policy = _load(files)
    try:
        loaded = load_cases(cases)
    except PolicyError as exc:
        _print_problems(exc)
        raise typer.Exit(2) from None
    results = run_cases(policy, loaded)
    for result in results:
        if not result.passed:
            _print_failure(result)
    failed = sum(1 for r in results if not r.passed)
    console.print(f"{len(results) - failed} passed, {failed} failed", soft_wrap=True)
    raise typer.Exit(1 if failed else 0)


def _print_failure(result: CaseResult) -> None:
    name = escape(result.case.spec.name)
    console.print(f"[bold red]FAIL[/bold red] {name} [dim]({result.case.source})[/dim]", soft_wrap=True)
    for mismatch in result.mismatches:
        console.print(f"  {mismatch.field}:")
        console.print(f"    [red]- expected: {escape(mismatch.expected)}[/red]", soft_wrap=True)
        console.print(f"    [green]+ actual:   {escape(mismatch.actual)}[/green]", soft_wrap=True)
    rules = ", ".join(result.verdict.matched_rule_names) or "(none: defaults apply)"
    console.print(f"  [dim]matching rules: {escape(rules)}[/dim]", soft_wrap=True)


def _parse_now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        errors.print(f"[red]--now: expected an ISO 8601 time like 2025-01-03T10:00:00Z, got {text!r}[/red]")
        raise typer.Exit(2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
