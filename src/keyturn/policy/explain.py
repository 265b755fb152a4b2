"""Presenting an `Explanation`: a rich table for people, a dict for machines (`--json`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from keyturn.model import ActionRequest, Decision, Verdict
from keyturn.policy.compiled import Explanation
from keyturn.policy.values import format_duration

_COLOUR = {Decision.ALLOW: "green", Decision.REVIEW: "yellow", Decision.DENY: "red"}


def explanation_table(explanation: Explanation) -> Table:
    table = Table(title="rules", title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("rule")
    table.add_column("decision")
    table.add_column("matched")
    table.add_column("why")
    table.add_column("source", style="dim", no_wrap=True)
    for number, entry in enumerate(explanation.rules, 1):
        colour = _COLOUR[entry.decision]
        if entry.error is not None:
            matched = Text("yes (fail closed)" if entry.matched else "no (fail closed)", style="bold magenta")
            why = Text(f"{entry.why}: {entry.error}", style="magenta")
        else:
            matched = Text("yes", style="bold") if entry.matched else Text("no", style="dim")
            why = Text(entry.why, style="" if entry.matched else "dim")
        table.add_row(
            str(number),
            entry.rule,
            Text(entry.decision.value, style=colour),
            matched,
            why,
            entry.source.rsplit("/", 1)[-1],  # the file name and line; the directory is the user's
        )
    return table


def verdict_summary(verdict: Verdict) -> RenderableType:
    colour = _COLOUR[verdict.decision]
    lines: list[RenderableType] = [
        Text.assemble(("verdict: ", "bold"), (verdict.decision.value, f"bold {colour}"))
    ]
    details = Table(show_header=False, box=None, padding=(0, 2))
    details.add_column(style="dim")
    details.add_column()
    if verdict.reason:
        details.add_row("reason", verdict.reason)
    details.add_row("matching rules", ", ".join(verdict.matched_rule_names) or "(none: defaults apply)")
    route = verdict.route
    if route is not None:
        details.add_row("approvers", route.describe())
        details.add_row("tier", route.tier or "-")
        details.add_row("ttl", format_duration(route.ttl))
        details.add_row("step-up", "yes" if route.step_up else "no")
        details.add_row("notify", ", ".join(route.notify) or "-")
        escalations = [f"after {format_duration(e.after)}: {', '.join(e.notify)}" for e in route.escalate]
        details.add_row("escalate", "; ".join(escalations) or "-")
        details.add_row("redact", ", ".join(route.redact) or "-")
        details.add_row("editable", ", ".join(route.editable) or "-")
        details.add_row("grant ttl", format_duration(route.grant_ttl))
        details.add_row("secrets", ", ".join(route.secrets) or "-")
        details.add_row("executors", ", ".join(route.executors) or "the requester")
    elif verdict.decision is Decision.ALLOW:
        details.add_row("grant ttl", format_duration(verdict.grant_ttl))
        details.add_row("secrets", ", ".join(verdict.secrets) or "-")
        details.add_row("executors", ", ".join(verdict.executors) or "the requester")
    details.add_row("policy", verdict.policy_revision)
    lines.append(details)
    return Group(*lines)


def print_explanation(console: Console, request: ActionRequest, explanation: Explanation) -> None:
    requester = request.requester
    console.print(
        Text.assemble(
            ("request: ", "bold"),
            f"{request.action} on {request.resource or '(no resource)'} by {requester.id}"
            f" ({requester.kind.value}; groups: {', '.join(sorted(requester.groups)) or '-'})",
        )
    )
    console.print(explanation_table(explanation))
    console.print(verdict_summary(explanation.verdict))


def explanation_as_dict(explanation: Explanation) -> dict[str, Any]:
    verdict = explanation.verdict
    return {
        "rules": [
            {
                "rule": e.rule,
                "decision": e.decision.value,
                "matched": e.matched,
                "why": e.why,
                "error": e.error,
                "source": e.source,
            }
            for e in explanation.rules
        ],
        "verdict": verdict.model_dump(mode="json"),
        "approvers": verdict.route.describe() if verdict.route else None,
    }
