"""The loaded policy: an immutable rule set with an action index, and the decision procedure of DESIGN §2.

Every rule that matches counts; deny beats review beats allow. A decision looks only at the rules whose
action patterns can match the request's action: exact names are looked up in a dict, patterns by their
literal prefix (`k8s.*`) or suffix (`*.read`), and only patterns with neither are checked for every
action. The list of rules matching an action is memoised, as is the verdict of an error-free set of
matching rules — both are pure functions of immutable data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from keyturn.model import ActionRequest, Decision, Escalation, Route, RuleMatch, Verdict
from keyturn.policy.cel import CelEvalError, new_context
from keyturn.policy.rules import CompiledRule
from keyturn.policy.values import GLOB_CHARS, literal_prefix

_CACHE_LIMIT = 8192


@dataclass(frozen=True)
class DefaultOutcome:
    """What `defaults` says for actions no rule matches."""

    decision: Decision
    route: Route | None
    reason: str | None
    grant_ttl: timedelta


@dataclass(frozen=True)
class RuleExplanation:
    rule: str
    decision: Decision
    source: str
    matched: bool
    why: str
    error: str | None = None


@dataclass(frozen=True)
class Explanation:
    """Every rule with whether it matched and why, then the verdict."""

    rules: tuple[RuleExplanation, ...]
    verdict: Verdict


class _ActionIndex:
    """Which rules' action patterns can match an action, without scanning every rule."""

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.exact: dict[str, list[CompiledRule]] = {}
        self.prefix: dict[str, list[CompiledRule]] = {}
        self.suffix: dict[str, list[CompiledRule]] = {}
        self.always: list[CompiledRule] = []
        for rule in rules:
            if rule.action is None:
                self.always.append(rule)
                continue
            for pattern in rule.action.patterns:
                head = literal_prefix(pattern)
                tail = _literal_suffix(pattern)
                if head == pattern:
                    self.exact.setdefault(pattern, []).append(rule)
                elif head:
                    self.prefix.setdefault(head, []).append(rule)
                elif tail:
                    self.suffix.setdefault(tail, []).append(rule)
                else:
                    self.always.append(rule)
        self.prefix_lengths = sorted({len(p) for p in self.prefix})
        self.suffix_lengths = sorted({len(s) for s in self.suffix})

    def candidates(self, action: str) -> set[CompiledRule]:
        found: set[CompiledRule] = set(self.always)
        found.update(self.exact.get(action, ()))
        for length in self.prefix_lengths:
            if length > len(action):
                break
            found.update(self.prefix.get(action[:length], ()))
        for length in self.suffix_lengths:
            if length > len(action):
                break
            found.update(self.suffix.get(action[-length:], ()))
        return found


def _literal_suffix(pattern: str) -> str:
    for index in range(len(pattern) - 1, -1, -1):
        if pattern[index] in GLOB_CHARS or pattern[index] == "]":
            return pattern[index + 1 :]
    return pattern


class CompiledPolicy:
    """An immutable, loaded policy. Thread-safe: the memo dicts only ever gain equal values."""

    __slots__ = ("_action_memo", "_index", "_verdict_memo", "default", "revision", "rules")

    def __init__(self, rules: tuple[CompiledRule, ...], default: DefaultOutcome, revision: str) -> None:
        self.rules = rules
        self.default = default
        self.revision = revision
        self._index = _ActionIndex(rules)
        self._action_memo: dict[str, tuple[CompiledRule, ...]] = {}
        self._verdict_memo: dict[tuple[int, ...], Verdict] = {}

    def __repr__(self) -> str:
        return f"CompiledPolicy({len(self.rules)} rules, revision={self.revision[:19]}…)"

    # --- evaluation --------------------------------------------------------------------------------

    def rules_for_action(self, action: str) -> tuple[CompiledRule, ...]:
        """The rules whose `match.action` matches `action` (or that have none), in policy order."""
        found = self._action_memo.get(action)
        if found is None:
            found = tuple(
                sorted(
                    (r for r in self._index.candidates(action) if r.action is None or r.action(action)),
                    key=lambda r: r.index,
                )
            )
            if len(self._action_memo) >= _CACHE_LIMIT:
                self._action_memo.clear()  # bounded: actions are attacker-chosen strings
            self._action_memo[action] = found
        return found

    def evaluate(self, request: ActionRequest, now: datetime) -> Verdict:
        hits: list[CompiledRule] = []
        pending: list[CompiledRule] = []
        resource = request.resource
        requester = request.requester
        for rule in self.rules_for_action(request.action):
            if rule.resource is not None and not rule.resource(resource):
                continue
            if rule.requester is not None and not rule.requester(requester):
                continue
            (pending if rule.when is not None else hits).append(rule)
        failed: dict[int, str] = {}
        if pending:
            activation = _activation(request, now, pending)
            for rule in pending:
                assert rule.when is not None
                try:
                    if rule.when.evaluate(activation):
                        hits.append(rule)
                except CelEvalError as exc:
                    # Fail closed: a broken condition counts as matched for deny/review, not for allow.
                    if rule.decision is not Decision.ALLOW:
                        hits.append(rule)
                        failed[rule.index] = str(exc)
            hits.sort(key=lambda r: r.index)
        if not hits:
            return self._default_verdict(request)
        if failed:
            return self._combine(hits, failed)
        key = tuple(r.index for r in hits)
        verdict = self._verdict_memo.get(key)
        if verdict is None:
            verdict = self._combine(hits, failed)
            if len(self._verdict_memo) >= _CACHE_LIMIT:
                self._verdict_memo.clear()
            self._verdict_memo[key] = verdict
        return verdict

    def _default_verdict(self, request: ActionRequest) -> Verdict:
        d = self.default
        if d.decision is Decision.DENY:
            reason = (
                d.reason or f"no policy rule covers action {request.action!r} (defaults.decision is deny)"
            )
            return Verdict(decision=Decision.DENY, reason=reason, policy_revision=self.revision)
        if d.decision is Decision.REVIEW:
            return Verdict(decision=Decision.REVIEW, route=d.route, policy_revision=self.revision)
        return Verdict(decision=Decision.ALLOW, grant_ttl=d.grant_ttl, policy_revision=self.revision)

    def _combine(self, hits: Sequence[CompiledRule], failed: dict[int, str]) -> Verdict:
        matches = tuple(_rule_match(r, failed.get(r.index)) for r in hits)
        redact = _union(r.redact for r in hits)
        deny = [r for r in hits if r.decision is Decision.DENY]
        if deny:
            reasons = []
            for rule in deny:
                reason = rule.reason or rule.name
                if rule.index in failed:
                    reason += f" (rule {rule.name!r} could not evaluate its condition and fails closed)"
                reasons.append(reason)
            return Verdict(
                decision=Decision.DENY,
                reason="; ".join(dict.fromkeys(reasons)),
                rules=matches,
                policy_revision=self.revision,
                redact=redact,
            )
        review = [r for r in hits if r.decision is Decision.REVIEW]
        if review:
            return Verdict(
                decision=Decision.REVIEW,
                route=combine_routes(review),
                rules=matches,
                policy_revision=self.revision,
                redact=redact,
            )
        return Verdict(
            decision=Decision.ALLOW,
            rules=matches,
            policy_revision=self.revision,
            grant_ttl=min(r.grant_ttl for r in hits),
            secrets=_union(r.secrets for r in hits),
            executors=_union(r.executors for r in hits),
            redact=redact,
        )

    # --- explanation -------------------------------------------------------------------------------

    def explain(self, request: ActionRequest, now: datetime) -> Explanation:
        """Every rule, in policy order, with whether it matched and why; then the verdict."""
        verdict = self.evaluate(request, now)
        counted = {m.rule: m for m in verdict.rules}
        activation: dict[str, Any] | None = None
        out: list[RuleExplanation] = []
        for rule in self.rules:
            miss = _first_miss(rule, request)
            if miss is not None:
                out.append(RuleExplanation(rule.name, rule.decision, rule.source, False, miss))
                continue
            if rule.when is None:
                out.append(RuleExplanation(rule.name, rule.decision, rule.source, True, rule.match_summary()))
                continue
            if activation is None:
                activation = _variables(request, now, _ALL_VARIABLES)
            try:
                result = rule.when.evaluate({k: activation[k] for k in rule.when.variables})
            except CelEvalError as exc:
                closed = rule.decision is not Decision.ALLOW
                why = (
                    "`when` failed to evaluate: counts as matched (fails closed)"
                    if closed
                    else "`when` failed to evaluate: an allow rule does not match (fails closed)"
                )
                out.append(RuleExplanation(rule.name, rule.decision, rule.source, closed, why, str(exc)))
                continue
            why = rule.match_summary() if result else "`when` is false"
            out.append(RuleExplanation(rule.name, rule.decision, rule.source, result, why))
        # evaluate() is the authority; explain must never disagree with it.
        for entry in out:
            assert entry.matched == (entry.rule in counted), (
                f"explain disagrees with evaluate on {entry.rule}"
            )
        return Explanation(tuple(out), verdict)


_ALL_VARIABLES = frozenset(
    {"action", "resource", "params", "requester", "on_behalf_of", "on_behalf_of_verified", "context", "now"}
)


def combine_routes(rules: Sequence[CompiledRule]) -> Route:
    """The route of several matching review rules: the most restrictive combination.

    Requirements add up (identical ones once), the shortest ttl and grant_ttl win, redactions, editable
    fields, notifications, escalations, secrets and executors are united, and step-up applies if any rule
    asks.
    Everything is sorted so that the order of rules never changes the route.
    """
    requirements = sorted({req for r in rules for req in r.requirements}, key=lambda q: (-q.count, q.groups))
    tiered = [r for r in rules if r.tier is not None]
    escalations: set[Escalation] = {e for r in rules for e in r.escalate}
    return Route(
        requirements=tuple(requirements),
        ttl=min(r.ttl for r in rules),
        tier=max(tiered, key=lambda r: r.tier_rank).tier if tiered else None,
        notify=_union(r.notify for r in rules),
        escalate=tuple(sorted(escalations, key=lambda e: (e.after, e.notify))),
        redact=_union(r.redact for r in rules),
        editable=_union(r.editable for r in rules),
        step_up=any(r.step_up for r in rules),
        grant_ttl=min(r.grant_ttl for r in rules),
        secrets=_union(r.secrets for r in rules),
        executors=_union(r.executors for r in rules),
    )


def _union(groups: Iterable[Iterable[str]]) -> tuple[str, ...]:
    return tuple(sorted({item for group in groups for item in group}))


def _rule_match(rule: CompiledRule, error: str | None) -> RuleMatch:
    if error is None:
        return rule.matched
    return RuleMatch(
        rule=rule.name,
        decision=rule.decision,
        matched=True,
        why="`when` failed to evaluate: counts as matched (fails closed)",
        source=rule.source,
        error=error,
        conditional=True,
    )


def _first_miss(rule: CompiledRule, request: ActionRequest) -> str | None:
    """Why a rule's `match` does not match, or None when it does."""
    if rule.action is not None and not rule.action(request.action):
        return f"action is not {' | '.join(rule.action.patterns)}"
    if rule.resource is not None and not rule.resource(request.resource):
        return f"resource is not {' | '.join(rule.resource.patterns)}"
    if rule.requester is not None and not rule.requester(request.requester):
        return f"requester is not {' | '.join(rule.requester.patterns)}"
    return None


def _variables(request: ActionRequest, now: datetime, names: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        if name == "action":
            out[name] = request.action
        elif name == "resource":
            out[name] = request.resource
        elif name == "params":
            out[name] = request.params
        elif name == "context":
            out[name] = request.context
        elif name == "on_behalf_of":
            out[name] = request.on_behalf_of
        elif name == "on_behalf_of_verified":
            out[name] = request.on_behalf_of_verified
        elif name == "requester":
            r = request.requester
            out[name] = {"id": r.id, "kind": r.kind.value, "groups": sorted(r.groups)}
        elif name == "now":
            out[name] = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return out


def _activation(request: ActionRequest, now: datetime, rules: Sequence[CompiledRule]) -> Any:
    """Only the variables the conditions use: converting values to CEL is what evaluation costs."""
    if len(rules) == 1:
        assert rules[0].when is not None
        return _variables(request, now, rules[0].when.variables)
    names: set[str] = set()
    for rule in rules:
        assert rule.when is not None
        names |= rule.when.variables
    return new_context(_variables(request, now, names))
