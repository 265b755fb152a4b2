"""The policy file format as pydantic models, and the translation of their errors to `file:line:column`.

The models only check shape and scalar values (types, durations, glob syntax, allowed keys); what needs
the whole policy (tiers that exist, unique rule names, approvers for every review, CEL) is checked by
`keyturn.policy.compiled`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from keyturn.model import canonical_principal_id
from keyturn.policy.errors import Problem
from keyturn.policy.loader import Document, PathKey
from keyturn.policy.values import check_glob, parse_duration

DecisionName = Literal["allow", "deny", "review"]


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a duration like 30s, 5m, 1h30m or 2d, got {value!r}")
    raise ValueError(f"a duration needs a unit (s, m, h, d): write {value}s or {value}m, not {value}")


def _listify(value: Any) -> Any:
    # a single value stands for a list of one; a wrong single value is then reported as a wrong item
    return value if isinstance(value, list) else [value]


def _editable_path(path: str) -> str:
    if not path.startswith("params.") or path == "params." or ".." in path:
        raise ValueError(f"an editable field is a dotted path under params, like params.rows; got {path!r}")
    return path


def _redact_path(path: str) -> str:
    head = path.split(".", 1)[0]
    if head not in ("params", "context", "justification") or path.endswith(".") or ".." in path:
        raise ValueError(
            f"a redacted field is a dotted path under params or context (or justification); got {path!r}"
        )
    return path


Name = Annotated[str, Field(min_length=1)]
Names = Annotated[list[Name], BeforeValidator(_listify)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]
Pattern = Annotated[str, AfterValidator(check_glob)]
Patterns = Annotated[list[Pattern], BeforeValidator(_listify), Field(min_length=1)]
EditablePaths = Annotated[list[Annotated[str, AfterValidator(_editable_path)]], BeforeValidator(_listify)]
RedactPaths = Annotated[list[Annotated[str, AfterValidator(_redact_path)]], BeforeValidator(_listify)]
Count = Annotated[int, Field(ge=1)]


def _executor(entry: str) -> str:
    """An executor is a principal id (`agent:runner`) or a group (`group:ci`)."""
    if entry.startswith("group:"):
        if not entry.removeprefix("group:").strip() or entry != entry.strip():
            raise ValueError(f"an executor group is group:NAME; got {entry!r}")
        return entry
    try:
        return canonical_principal_id(entry)
    except ValueError as exc:
        raise ValueError(f"an executor is a principal id (agent:NAME) or group:NAME: {exc}") from None


Executors = Annotated[list[Annotated[str, AfterValidator(_executor)]], BeforeValidator(_listify)]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RequirementSpec(Spec):
    groups: Annotated[Names, Field(min_length=1)]
    count: Count = 1


class EscalationSpec(Spec):
    after: Duration
    notify: Names = []


class RouteSpec(Spec):
    """What a tier and a review rule may say about the route."""

    require: Annotated[list[RequirementSpec], Field(min_length=1)] | None = None
    quorum: Count | None = None
    approvers: Annotated[Names, Field(min_length=1)] | None = None
    ttl: Duration | None = None
    grant_ttl: Duration | None = None
    notify: Names = []
    escalate: list[EscalationSpec] | None = None
    step_up: bool | None = None
    redact: RedactPaths | None = None
    editable: EditablePaths | None = None
    executors: Executors | None = None  # who may consume the grant instead of the requester
    description: str | None = None


class TierSpec(RouteSpec):
    pass


class MatchSpec(Spec):
    action: Patterns | None = None
    resource: Patterns | None = None
    requester: Patterns | None = None  # an id glob, or `group:NAME`


class RuleSpec(RouteSpec):
    name: Name
    match: MatchSpec = MatchSpec()
    when: str | None = None
    decision: DecisionName
    reason: str | None = None
    tier: str | None = None
    secrets: Names = []


class DefaultsSpec(Spec):
    decision: DecisionName = "review"
    approvers: Annotated[Names, Field(min_length=1)] | None = None
    quorum: Count | None = None
    ttl: Duration | None = None
    grant_ttl: Duration | None = None
    notify: Names = []
    reason: str | None = None


class PolicyFileSpec(Spec):
    version: Literal[1] = 1
    defaults: DefaultsSpec | None = None
    tiers: dict[Name, TierSpec] = {}
    rules: list[RuleSpec] = []


def parse_policy_file(doc: Document) -> tuple[PolicyFileSpec | None, list[Problem]]:
    """Validate one loaded file. An empty file is an empty policy."""
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        return None, [doc.problem((), f"a policy file is a mapping with {_allowed(PolicyFileSpec)}")]
    try:
        return PolicyFileSpec.model_validate(data), []
    except ValidationError as exc:
        return None, translate_errors(doc, exc, _model_at)


def translate_errors(doc: Document, exc: ValidationError, model_at: Any, base: PathKey = ()) -> list[Problem]:
    """Pydantic errors as problems positioned on the offending key or value."""
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc: PathKey = (*base, *(part for part in error["loc"] if isinstance(part, str | int)))
        kind = error["type"]
        field = _dotted(loc)
        given = error.get("input")
        if kind == "extra_forbidden":
            model = model_at(loc[len(base) : -1])
            allowed = f"; allowed: {_allowed(model)}" if model is not None else ""
            problems.append(
                doc.problem(loc, f"unknown key {loc[-1]!r} in {_dotted(loc[:-1])}{allowed}", key=True)
            )
            continue
        if kind == "missing":
            problems.append(doc.problem(loc[:-1], f"{_dotted(loc[:-1])}: missing required key {loc[-1]!r}"))
            continue
        message = _MESSAGES.get(kind)
        if message is not None:
            text = f"{field}: expected {message}, got {_describe(given)}"
        elif kind == "value_error":
            text = f"{field}: {str(error['msg']).removeprefix('Value error, ')}"
        elif kind == "literal_error":
            expected = str(error.get("ctx", {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
            text = f"{field}: expected one of {expected}, got {given!r}"
        else:
            text = f"{field}: {error['msg']}"
        problems.append(doc.problem(loc, text))
    return problems


_MESSAGES = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "timedelta_type": "a duration like 30s, 5m, 1h30m or 2d",
}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _dotted(loc: PathKey) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the file"


def _allowed(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _model_at(loc: PathKey) -> type[BaseModel] | None:
    """The model whose keys live at `loc` inside a policy file (for 'allowed keys' hints)."""
    if loc == ():
        return PolicyFileSpec
    head, rest = loc[0], loc[1:]
    if head == "defaults" and not rest:
        return DefaultsSpec
    if head == "tiers" and len(rest) >= 1:
        return _route_child(TierSpec, rest[1:])
    if head == "rules" and len(rest) >= 1:
        if rest[1:2] == ("match",) and len(rest) == 2:
            return MatchSpec
        return _route_child(RuleSpec, rest[1:])
    return None


def _route_child(model: type[BaseModel], rest: PathKey) -> type[BaseModel] | None:
    if not rest:
        return model
    if rest[0] == "require" and len(rest) == 2:
        return RequirementSpec
    if rest[0] == "escalate" and len(rest) == 2:
        return EscalationSpec
    return None
