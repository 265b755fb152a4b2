"""Policy test cases (`keyturn policy test`): requests with the verdict they must get.

```yaml
- name: prod exports of personal data need a data owner and security
  now: "2025-01-06T10:00:00Z"          # optional; default: a fixed Monday
  request: {action: db.export, resource: "postgres://prod/customers", params: {rows: 10, tags: [pii]}}
  expect:
    decision: review
    tier: critical
    approvers: "1 from data-owners and 1 from security"   # or [{groups: [...], count: N}]
    reason_contains: "..."             # deny only
    rules: [exports need a data owner, large or personal prod exports]   # exactly the matching rules
```
The file is a list of cases, or a mapping with `cases:` (and an optional `now:` for all of them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from keyturn.model import ActionRequest, Principal, PrincipalKind, Requirement, Verdict
from keyturn.policy.compiled import CompiledPolicy
from keyturn.policy.errors import PolicyError, Problem
from keyturn.policy.loader import Document, PathKey, load_yaml, read_text
from keyturn.policy.schema import DecisionName, Duration, Names, RequirementSpec, translate_errors
from keyturn.policy.values import format_duration

#: Cases without `now` run at this time: a Monday, so that weekday rules are deterministic.
DEFAULT_NOW = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)
DEFAULT_REQUESTER = "agent:policy-test"

_REQUIREMENT = re.compile(r"\s*(\d+)\s+from\s+(.+?)\s*")


def _timestamp(value: Any) -> Any:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected an ISO 8601 time like 2025-01-03T10:00:00Z, got {value!r}") from None
        if parsed.tzinfo is None:
            raise ValueError(f"the time {value!r} needs a timezone (Z or +01:00)")
        return parsed
    raise ValueError(f"expected an ISO 8601 time like 2025-01-03T10:00:00Z, got {value!r}")


def parse_requirements(text: str) -> tuple[Requirement, ...]:
    """'2 from sre and 1 from security or data-owners' → requirements. ValueError if malformed."""
    out = []
    for part in re.split(r"\s+and\s+", text.strip()):
        found = _REQUIREMENT.fullmatch(part)
        if found is None or int(found.group(1)) < 1:
            raise ValueError(f"expected approvers like '2 from sre and 1 from security', got {text!r}")
        groups = tuple(g.strip() for g in re.split(r"\s+or\s+|\s*,\s*", found.group(2)) if g.strip())
        out.append(Requirement(groups=groups, count=int(found.group(1))))
    return tuple(out)


def _approvers(value: Any) -> Any:
    if isinstance(value, str):
        return [{"groups": list(r.groups), "count": r.count} for r in parse_requirements(value)]
    return value


Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequesterSpec(_Spec):
    id: str = DEFAULT_REQUESTER
    kind: Literal["agent", "human"] = "agent"
    groups: Names = []


class RequestSpec(_Spec):
    action: Annotated[str, Field(min_length=1)]
    resource: str = ""
    params: dict[str, Any] = {}
    context: dict[str, Any] = {}
    justification: str = ""
    requester: RequesterSpec = RequesterSpec()
    on_behalf_of: str | None = None
    on_behalf_of_verified: bool = False

    def to_request(self) -> ActionRequest:
        return ActionRequest(
            action=self.action,
            resource=self.resource,
            params=self.params,
            context=self.context,
            justification=self.justification,
            requester=Principal(
                id=self.requester.id,
                kind=PrincipalKind(self.requester.kind),
                groups=frozenset(self.requester.groups),
            ),
            on_behalf_of=self.on_behalf_of,
            on_behalf_of_verified=self.on_behalf_of_verified,
        )


class ExpectSpec(_Spec):
    decision: DecisionName
    tier: str | None = None
    approvers: Annotated[list[RequirementSpec], BeforeValidator(_approvers)] | None = None
    reason_contains: str | None = None
    rules: Names | None = None
    ttl: Duration | None = None
    step_up: bool | None = None
    secrets: Names | None = None
    editable: Names | None = None
    redact: Names | None = None


class CaseSpec(_Spec):
    name: Annotated[str, Field(min_length=1)]
    now: Timestamp | None = None
    request: RequestSpec
    expect: ExpectSpec


class CaseFileSpec(_Spec):
    now: Timestamp | None = None
    cases: list[CaseSpec]


@dataclass(frozen=True)
class Case:
    spec: CaseSpec
    now: datetime
    source: str  # "cases.yaml:12"


@dataclass(frozen=True)
class Mismatch:
    field: str
    expected: str
    actual: str


@dataclass(frozen=True)
class CaseResult:
    case: Case
    verdict: Verdict
    mismatches: tuple[Mismatch, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.mismatches


def load_cases(path: Path) -> list[Case]:
    """Read a cases file; a malformed one is a `PolicyError` with file:line:column."""
    text, _ = read_text(path)
    doc = load_yaml(str(path), text)
    data = doc.data
    try:
        if isinstance(data, list):
            cases = _CASE_LIST.validate_python(data)
            default_now = None
            prefix: PathKey = ()
        elif isinstance(data, dict):
            spec = CaseFileSpec.model_validate(data)
            cases, default_now, prefix = spec.cases, spec.now, ("cases",)
        else:
            raise PolicyError(
                [doc.problem((), "a cases file is a list of cases (or a mapping with `cases:`)")]
            )
    except ValidationError as exc:
        bare = isinstance(data, list)
        raise PolicyError(
            translate_errors(doc, exc, lambda loc: _case_model_at(("cases", *loc) if bare else loc))
        ) from None
    return [
        Case(case, case.now or default_now or DEFAULT_NOW, f"{doc.file}:{doc.where((*prefix, index)).line}")
        for index, case in enumerate(cases)
    ]


_CASE_LIST = TypeAdapter(list[CaseSpec])


def _case_model_at(loc: PathKey) -> type[BaseModel] | None:
    models: dict[tuple[str, ...], type[BaseModel]] = {
        (): CaseFileSpec,
        ("cases",): CaseSpec,
        ("cases", "request"): RequestSpec,
        ("cases", "request", "requester"): RequesterSpec,
        ("cases", "expect"): ExpectSpec,
        ("cases", "expect", "approvers"): RequirementSpec,
    }
    return models.get(tuple(p for p in loc if isinstance(p, str)))


def load_request(path: Path) -> ActionRequest:
    """A request JSON file for `explain`; errors name file:line:column and the field."""
    text, _ = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError([Problem(str(path), exc.lineno, exc.colno, f"invalid JSON: {exc.msg}")]) from None
    try:
        doc = load_yaml(str(path), text)  # JSON is YAML: this gives positions for validation errors
    except PolicyError:
        doc = Document(str(path), data, text)
    if not isinstance(data, dict):
        raise PolicyError([doc.problem((), "a request is a JSON object with at least `action`")])
    try:
        return RequestSpec.model_validate(data).to_request()
    except ValidationError as exc:
        raise PolicyError(translate_errors(doc, exc, _request_model_at)) from None


def _request_model_at(loc: PathKey) -> type[BaseModel] | None:
    models: dict[tuple[str, ...], type[BaseModel]] = {(): RequestSpec, ("requester",): RequesterSpec}
    return models.get(tuple(p for p in loc if isinstance(p, str)))


def run_cases(policy: CompiledPolicy, cases: list[Case]) -> list[CaseResult]:
    results = []
    for case in cases:
        verdict = policy.evaluate(case.spec.request.to_request(), case.now)
        results.append(CaseResult(case, verdict, tuple(compare(case.spec.expect, verdict))))
    return results


def compare(expect: ExpectSpec, verdict: Verdict) -> list[Mismatch]:
    out: list[Mismatch] = []
    route = verdict.route

    def check(name: str, expected: Any, actual: Any) -> None:
        if expected != actual:
            out.append(Mismatch(name, _show(expected), _show(actual)))

    check("decision", expect.decision, verdict.decision.value)
    if expect.tier is not None:
        check("tier", expect.tier, route.tier if route else None)
    if expect.approvers is not None:
        wanted = {Requirement(groups=tuple(r.groups), count=r.count) for r in expect.approvers}
        have = set(route.requirements) if route else set()
        if wanted != have:
            out.append(Mismatch("approvers", _describe(wanted), _describe(have)))
    if expect.reason_contains is not None and expect.reason_contains not in (verdict.reason or ""):
        out.append(Mismatch("reason", f"… {expect.reason_contains!r} …", repr(verdict.reason)))
    if expect.rules is not None:
        check("rules", sorted(expect.rules), sorted(verdict.matched_rule_names))
    if expect.ttl is not None:
        check("ttl", expect.ttl, route.ttl if route else None)
    if expect.step_up is not None:
        check("step_up", expect.step_up, route.step_up if route else False)
    if expect.secrets is not None:
        check("secrets", sorted(expect.secrets), sorted(verdict.brokered_secrets))
    if expect.editable is not None:
        check("editable", sorted(expect.editable), sorted(route.editable) if route else [])
    if expect.redact is not None:
        check("redact", sorted(expect.redact), sorted(route.redact) if route else [])
    return out


def _describe(requirements: set[Requirement]) -> str:
    ordered = sorted(requirements, key=lambda r: (-r.count, r.groups))
    return " and ".join(r.describe() for r in ordered) or "(no approvers)"


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(none)"
    return str(value)
