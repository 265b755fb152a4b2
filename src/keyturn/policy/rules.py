"""A rule after compilation: matchers, compiled `when`, and its resolved route parts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from keyturn.model import Decision, Escalation, Principal, Requirement, RuleMatch
from keyturn.policy.cel import CelProgram
from keyturn.policy.values import Glob


@dataclass(frozen=True)
class RequesterMatcher:
    """`match.requester`: id globs and `group:NAME` globs; any of them matching is a match."""

    ids: Glob | None
    groups: Glob | None
    patterns: tuple[str, ...]

    @classmethod
    def build(cls, patterns: list[str]) -> RequesterMatcher:
        ids = [p for p in patterns if not p.startswith("group:")]
        groups = [p.removeprefix("group:") for p in patterns if p.startswith("group:")]
        return cls(Glob(ids) if ids else None, Glob(groups) if groups else None, tuple(patterns))

    def __call__(self, requester: Principal) -> bool:
        if self.ids is not None and self.ids(requester.id):
            return True
        return self.groups is not None and any(self.groups(g) for g in requester.groups)


@dataclass(frozen=True, eq=False)
class CompiledRule:
    index: int  # position in the concatenated policy: the order of explanations
    name: str
    decision: Decision
    source: str  # "policy.yaml:12"
    action: Glob | None
    resource: Glob | None
    requester: RequesterMatcher | None
    when: CelProgram | None
    reason: str | None
    # route parts (review rules); grant_ttl and secrets also apply to allow rules
    requirements: tuple[Requirement, ...]
    ttl: timedelta
    tier: str | None
    tier_rank: int  # declaration order of the tier; the verdict names the last-declared (most severe)
    notify: tuple[str, ...]
    escalate: tuple[Escalation, ...]
    redact: tuple[str, ...]
    editable: tuple[str, ...]
    step_up: bool
    grant_ttl: timedelta
    secrets: tuple[str, ...]
    executors: tuple[str, ...]  # who may consume the grant instead of the requester; () = the requester
    matched: RuleMatch  # precomputed answer for a plain match (no evaluation error)

    def match_summary(self) -> str:
        parts = [
            f"{key} {' | '.join(glob.patterns)}"
            for key, glob in (("action", self.action), ("resource", self.resource))
            if glob is not None
        ]
        if self.requester is not None:
            parts.append(f"requester {' | '.join(self.requester.patterns)}")
        text = "matches " + ", ".join(parts) if parts else "matches every request"
        return text + ("; `when` is true" if self.when is not None else "")
