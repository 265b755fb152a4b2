"""From policy files to a `CompiledPolicy`: read, validate, resolve tiers and defaults, compile CEL.

Every problem found is collected (not only the first), each with `file:line:column`, and raised together
as one `PolicyError`. Several files load as one policy: their rules are concatenated in file order, tiers
are merged (a tier name defined twice is an error naming both places), and only one file may hold
`defaults` (a second `defaults` is an error naming the first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from keyturn.model import Decision, Escalation, Requirement, Route, RuleMatch
from keyturn.policy.cel import CelCompileError, CelProgram, compile_expression
from keyturn.policy.compiled import CompiledPolicy, DefaultOutcome
from keyturn.policy.errors import PolicyError, Problem
from keyturn.policy.loader import Document, PathKey, load_yaml, read_text, scalar_offset
from keyturn.policy.rules import CompiledRule, RequesterMatcher
from keyturn.policy.schema import (
    DefaultsSpec,
    PolicyFileSpec,
    RouteSpec,
    RuleSpec,
    TierSpec,
    parse_policy_file,
)
from keyturn.policy.values import Glob

T = TypeVar("T")

DEFAULT_TTL = timedelta(hours=1)
DEFAULT_GRANT_TTL = timedelta(minutes=5)

# Keys that only make sense on a review rule; on allow/deny rules they are almost certainly a mistake.
_REVIEW_ONLY = (
    "require",
    "quorum",
    "approvers",
    "ttl",
    "escalate",
    "step_up",
    "signature",
    "redact",
    "editable",
    "notify",
)


@dataclass
class _Tier:
    name: str
    spec: TierSpec
    doc: Document
    rank: int


def _pick(own: T | None, inherited: T | None, fallback: T) -> T:
    """The rule's own value, else the tier's, else the fallback."""
    if own is not None:
        return own
    return inherited if inherited is not None else fallback


def revision_of(files: Sequence[tuple[str, bytes]]) -> str:
    """`sha256:<hex>` over the files' names and bytes (length-prefixed, so no two inputs collide)."""
    digest = hashlib.sha256()
    for name, raw in files:
        encoded = name.encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded + len(raw).to_bytes(8, "big") + raw)
    return "sha256:" + digest.hexdigest()


def load_policy(paths: Sequence[Path | str], *, targets: frozenset[str] | None = None) -> CompiledPolicy:
    """Load and compile policy files into one policy; `PolicyError` lists every problem.

    `targets` are the notification targets the server configuration defines (exact names, or `KIND:*` for
    any name of a kind); a `notify` target outside them is a problem at its file:line. None (no server
    configuration at hand, e.g. `keyturn policy check` without `--config`) skips that check.
    """
    if not paths:
        raise PolicyError([Problem("<policy>", 1, 1, "no policy file given")])
    problems: list[Problem] = []
    parsed: list[tuple[Document, PolicyFileSpec]] = []
    contents: list[tuple[str, bytes]] = []
    for raw_path in paths:
        path = Path(raw_path)
        try:
            text, raw = read_text(path)
            doc = load_yaml(str(path), text)
        except PolicyError as exc:
            problems.extend(exc.problems)
            continue
        contents.append((path.name, raw))
        spec, found = parse_policy_file(doc)
        problems.extend(found)
        if spec is not None:
            parsed.append((doc, spec))
    if targets is not None:
        for doc, spec in parsed:
            problems.extend(_undefined_targets(doc, spec, targets))
    if problems:
        raise PolicyError(problems)
    return _Compiler(parsed, revision_of(contents)).compile()


def _undefined_targets(doc: Document, spec: PolicyFileSpec, targets: frozenset[str]) -> list[Problem]:
    """Every `notify` target (route and escalation steps) that the configuration does not define."""
    places: list[tuple[PathKey, list[str]]] = []
    if spec.defaults is not None:
        places.append((("defaults", "notify"), list(spec.defaults.notify)))
    blocks: list[tuple[PathKey, RouteSpec]] = [(("tiers", name), tier) for name, tier in spec.tiers.items()]
    blocks += [(("rules", index), rule) for index, rule in enumerate(spec.rules)]
    for path, block in blocks:
        places.append(((*path, "notify"), list(block.notify)))
        for step, escalation in enumerate(block.escalate or []):
            places.append(((*path, "escalate", step, "notify"), list(escalation.notify)))
    defined = ", ".join(sorted(targets)) or "none"
    problems = []
    for path, names in places:
        for index, name in enumerate(names):
            kind = name.split(":", 1)[0]
            if name in targets or f"{kind}:*" in targets:
                continue
            problems.append(
                doc.problem(
                    (*path, index),
                    f"notify target {name!r} is not defined by the server configuration (channels:);"
                    f" defined: {defined}",
                )
            )
    return problems


class _Compiler:
    def __init__(self, parsed: list[tuple[Document, PolicyFileSpec]], revision: str) -> None:
        self.parsed = parsed
        self.revision = revision
        self.problems: list[Problem] = []
        self.tiers: dict[str, _Tier] = {}
        self.defaults: DefaultsSpec = DefaultsSpec()
        self.defaults_doc: Document | None = None

    def compile(self) -> CompiledPolicy:
        self._collect_defaults_and_tiers()
        rules = self._compile_rules()
        default = self._default_outcome()
        if self.problems:
            raise PolicyError(self.problems)
        return CompiledPolicy(tuple(rules), default, self.revision)

    # --- defaults and tiers ------------------------------------------------------------------------

    def _collect_defaults_and_tiers(self) -> None:
        for doc, spec in self.parsed:
            if spec.defaults is not None:
                if self.defaults_doc is not None:
                    first = self.defaults_doc.where(("defaults",), key=True)
                    self.problems.append(
                        doc.problem(
                            ("defaults",),
                            f"defaults are already given in {self.defaults_doc.file}:{first.line};"
                            " only one policy file may set defaults",
                            key=True,
                        )
                    )
                else:
                    self.defaults, self.defaults_doc = spec.defaults, doc
            for name, tier in spec.tiers.items():
                if name in self.tiers:
                    other = self.tiers[name]
                    first = other.doc.where(("tiers", name), key=True)
                    self.problems.append(
                        doc.problem(
                            ("tiers", name),
                            f"tier {name!r} is already defined at {other.doc.file}:{first.line}",
                            key=True,
                        )
                    )
                    continue
                self.tiers[name] = _Tier(name, tier, doc, len(self.tiers))
                self._check_route_block(doc, ("tiers", name), tier)

    def _default_outcome(self) -> DefaultOutcome:
        d = self.defaults
        decision = Decision(d.decision)
        route = None
        if decision is Decision.REVIEW:
            if d.approvers is None:
                doc = self.defaults_doc or (self.parsed[0][0] if self.parsed else None)
                if doc is not None:
                    self.problems.append(
                        doc.problem(
                            ("defaults",) if self.defaults_doc else (),
                            "defaults.approvers is required: actions that no rule matches go to review"
                            " (defaults.decision is review unless set) and a review needs approvers",
                            key=True,
                        )
                    )
                return DefaultOutcome(decision, None, d.reason, d.grant_ttl or DEFAULT_GRANT_TTL)
            route = Route(
                requirements=(Requirement(groups=tuple(d.approvers), count=d.quorum or 1),),
                ttl=d.ttl or DEFAULT_TTL,
                notify=tuple(sorted(set(d.notify))),
                grant_ttl=d.grant_ttl or DEFAULT_GRANT_TTL,
            )
        return DefaultOutcome(decision, route, d.reason, d.grant_ttl or DEFAULT_GRANT_TTL)

    def _check_route_block(self, doc: Document, path: PathKey, spec: RouteSpec) -> None:
        if spec.require is not None and (spec.quorum is not None or spec.approvers is not None):
            key = "quorum" if spec.quorum is not None else "approvers"
            self.problems.append(
                doc.problem(
                    (*path, key),
                    f"give either `require` or `quorum`/`approvers`, not both (`{key}` is shorthand for"
                    " require: [{groups: approvers, count: quorum}])",
                    key=True,
                )
            )

    # --- rules -------------------------------------------------------------------------------------

    def _compile_rules(self) -> list[CompiledRule]:
        seen: dict[str, tuple[Document, int]] = {}
        rules: list[CompiledRule] = []
        for doc, spec in self.parsed:
            for position, rule in enumerate(spec.rules):
                path: PathKey = ("rules", position)
                if rule.name in seen:
                    other_doc, other_pos = seen[rule.name]
                    first = other_doc.where(("rules", other_pos, "name"))
                    self.problems.append(
                        doc.problem(
                            (*path, "name"),
                            f"duplicate rule name {rule.name!r}"
                            f" (first defined at {other_doc.file}:{first.line})",
                        )
                    )
                    continue
                seen[rule.name] = (doc, position)
                compiled = self._compile_rule(doc, path, rule, len(rules))
                if compiled is not None:
                    rules.append(compiled)
        return rules

    def _compile_rule(self, doc: Document, path: PathKey, rule: RuleSpec, index: int) -> CompiledRule | None:
        before = len(self.problems)
        decision = Decision(rule.decision)
        label = f"rule {rule.name!r}"
        tier: _Tier | None = None
        if rule.tier is not None:
            tier = self.tiers.get(rule.tier)
            if tier is None:
                known = ", ".join(self.tiers) or "none are defined"
                self.problems.append(
                    doc.problem((*path, "tier"), f"unknown tier {rule.tier!r} (tiers: {known})")
                )
        self._check_route_block(doc, path, rule)
        if decision is not Decision.REVIEW:
            for key in _REVIEW_ONLY:
                if key in rule.model_fields_set:
                    self.problems.append(
                        doc.problem((*path, key), f"{label}: `{key}` only applies to review rules", key=True)
                    )
        if decision is Decision.DENY:
            if not (rule.reason or "").strip():
                self.problems.append(
                    doc.problem(path, f"{label}: a deny rule needs a `reason` (the requester is told why)")
                )
            for key in ("secrets", "grant_ttl", "executors"):
                if key in rule.model_fields_set:
                    self.problems.append(
                        doc.problem((*path, key), f"{label}: `{key}` does not apply to deny rules", key=True)
                    )
        requirements: tuple[Requirement, ...] = ()
        if decision is Decision.REVIEW:
            requirements = self._requirements(rule, tier.spec if tier else None)
            if not requirements:
                self.problems.append(
                    doc.problem(
                        path,
                        f"{label}: a review rule needs approvers: give `require`, `quorum` with `approvers`,"
                        " a `tier` that has them, or defaults.approvers",
                    )
                )
        when = self._compile_when(doc, (*path, "when"), rule.when)
        if len(self.problems) > before:
            return None
        return self._build(doc, path, rule, index, decision, tier, requirements, when)

    def _requirements(self, rule: RuleSpec, tier: TierSpec | None) -> tuple[Requirement, ...]:
        # What the rule says replaces the tier's value; quorum/approvers fall back separately.
        defaults = self.defaults
        if rule.require is not None:
            specs = [(tuple(r.groups), r.count) for r in rule.require]
        elif rule.quorum is not None or rule.approvers is not None:
            groups = rule.approvers or (tier.approvers if tier else None) or defaults.approvers
            count = rule.quorum or (tier.quorum if tier else None) or defaults.quorum or 1
            specs = [(tuple(groups), count)] if groups else []
        elif tier is not None and tier.require is not None:
            specs = [(tuple(r.groups), r.count) for r in tier.require]
        elif tier is not None and (tier.quorum is not None or tier.approvers is not None):
            groups = tier.approvers or defaults.approvers
            specs = [(tuple(groups), tier.quorum or defaults.quorum or 1)] if groups else []
        elif defaults.approvers:
            specs = [(tuple(defaults.approvers), defaults.quorum or 1)]
        else:
            specs = []
        return tuple(dict.fromkeys(Requirement(groups=g, count=c) for g, c in specs))

    def _compile_when(self, doc: Document, path: PathKey, source: str | None) -> CelProgram | None:
        if source is None:
            return None
        try:
            return compile_expression(source)
        except CelCompileError as exc:
            pos = scalar_offset(doc, path, exc.line, exc.column)
            self.problems.append(Problem(doc.file, pos.line, pos.column, exc.message))
            return None

    def _build(
        self,
        doc: Document,
        path: PathKey,
        rule: RuleSpec,
        index: int,
        decision: Decision,
        tier: _Tier | None,
        requirements: tuple[Requirement, ...],
        when: CelProgram | None,
    ) -> CompiledRule:
        t = tier.spec if tier else None
        d = self.defaults

        escalate = rule.escalate if rule.escalate is not None else (t.escalate if t else None) or []
        source = f"{doc.file}:{doc.where(path).line}"
        m = rule.match
        compiled = CompiledRule(
            index=index,
            name=rule.name,
            decision=decision,
            source=source,
            action=Glob(m.action) if m.action else None,
            resource=Glob(m.resource) if m.resource else None,
            requester=RequesterMatcher.build(m.requester) if m.requester else None,
            when=when,
            reason=rule.reason,
            requirements=requirements,
            ttl=_pick(rule.ttl, t.ttl if t else None, d.ttl or DEFAULT_TTL),
            tier=tier.name if tier else None,
            tier_rank=tier.rank if tier else -1,
            notify=tuple(sorted(set(rule.notify) | set(t.notify if t else ()))),
            escalate=tuple(Escalation(after=e.after, notify=tuple(e.notify)) for e in escalate),
            redact=tuple(_pick(rule.redact, t.redact if t else None, [])),
            editable=tuple(_pick(rule.editable, t.editable if t else None, [])),
            step_up=_pick(rule.step_up, t.step_up if t else None, False),
            signature=_pick(rule.signature, t.signature if t else None, None),
            grant_ttl=_pick(rule.grant_ttl, t.grant_ttl if t else None, d.grant_ttl or DEFAULT_GRANT_TTL),
            secrets=tuple(sorted(set(rule.secrets))),
            executors=tuple(sorted(set(_pick(rule.executors, t.executors if t else None, [])))),
            matched=RuleMatch(
                rule=rule.name,
                decision=decision,
                matched=True,
                why="",
                source=source,
                conditional=rule.when is not None,
            ),
        )
        why = compiled.match_summary()
        object.__setattr__(compiled, "matched", compiled.matched.model_copy(update={"why": why}))
        return compiled
