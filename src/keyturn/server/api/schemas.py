"""Request bodies of the REST API. Unknown fields are refused so a typo never silently does nothing.

Limits (docs/api.md "Limits"), each refused with 422 naming the field and the limit, so no body can make
the server do unbounded work: a string in `params`/`context` at most `MAX_STRING_CHARS`, an object key at
most `MAX_KEY_CHARS`, at most `MAX_JSON_VALUES` values in one of them, nested at most `MAX_JSON_DEPTH`
deep. Top-level strings have their own `max_length`. No string field may contain U+0000 (PostgreSQL cannot
store it; SQLite could, so refusing it everywhere keeps both backends alike). The body as a whole is
bounded before it is read (`keyturn.server.limits`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from keyturn.model import canonical_json_problem, canonical_principal_id, refuse_nul

ACTION_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_*-]+)*$"

MAX_STRING_CHARS = 65_536
MAX_KEY_CHARS = 256
MAX_JSON_VALUES = 10_000
MAX_JSON_DEPTH = 32


def json_limits_problem(value: Any, path: str) -> str | None:
    """Why a JSON value (params, context) breaks a limit, naming the place and the limit; None if none.

    Iterative, so a deep value costs no recursion, and it stops at the first problem."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    count = 0
    while stack:
        item, where, depth = stack.pop()
        count += 1
        if count > MAX_JSON_VALUES:
            return f"{path}: more than {MAX_JSON_VALUES} values (limit max_json_values)"
        if depth > MAX_JSON_DEPTH:
            return f"{where[:200]}: nested deeper than {MAX_JSON_DEPTH} levels (limit max_json_depth)"
        if isinstance(item, str):
            if len(item) > MAX_STRING_CHARS:
                return (
                    f"{where[:200]}: a string of {len(item)} characters is longer than "
                    f"{MAX_STRING_CHARS} (limit max_string_chars)"
                )
        elif isinstance(item, dict):
            for key, child in item.items():
                if len(key) > MAX_KEY_CHARS:
                    return (
                        f"{where[:200]}: a key of {len(key)} characters (limit max_key_chars {MAX_KEY_CHARS})"
                    )
                stack.append((child, f"{where}.{key[:50]}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _canonical_json(cls, value: Any, info: ValidationInfo) -> Any:
        # Everything a body carries ends up in digests and ledger events: refuse what cannot be
        # canonicalised here, with the path, instead of failing later with a 500.
        name = info.field_name or "body"
        if isinstance(value, str):
            refuse_nul(value, name)
        if isinstance(value, dict | list):
            problem = json_limits_problem(value, name)
            if problem:
                raise ValueError(problem)
        problem = canonical_json_problem(value, name)
        if problem:
            raise ValueError(problem)
        return value


class ActionBody(Body):
    """What an action request says: submitted as it is, or evaluated as a dry run."""

    action: str = Field(min_length=1, max_length=200, pattern=ACTION_PATTERN, examples=["db.export"])
    resource: str = Field(default="", max_length=2000, examples=["postgres://prod/customers"])
    params: dict[str, Any] = Field(default_factory=dict)
    justification: str = Field(default="", max_length=10_000)
    context: dict[str, Any] = Field(default_factory=dict)
    on_behalf_of: str | None = Field(
        default=None,
        max_length=320,
        pattern=r"^[A-Za-z][A-Za-z0-9_-]*:\S+$",
        description="the principal id of the human the agent acts for, e.g. user:alice@example.com",
        examples=["user:alice@example.com"],
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("on_behalf_of")
    @classmethod
    def _canonical_on_behalf_of(cls, value: str | None) -> str | None:
        # the one canonical form of principal ids (keyturn.model); an ambiguous id is refused here
        return None if value is None else canonical_principal_id(value)


class SubmitBody(ActionBody):
    execute: bool = Field(
        default=False,
        description=(
            "when policy allows the action outright, consume its grant in the same transaction and "
            "answer with `execution` (what POST /v1/grants/consume answers); pending and denied "
            "answers are unchanged"
        ),
    )


class RequesterBody(Body):
    id: str = Field(min_length=1, max_length=320)
    kind: Literal["agent", "human"] = "agent"
    groups: list[str] = Field(default_factory=list, max_length=100)


class EvaluateBody(ActionBody):
    requester: RequesterBody | None = Field(
        default=None, description="simulate another principal; defaults to the caller"
    )
    now: str | None = Field(default=None, description="evaluate at this ISO 8601 time (dry run only)")


class ReviewBody(Body):
    decision: Literal["approve", "deny"]
    comment: str = Field(default="", max_length=10_000)
    params: dict[str, Any] | None = Field(
        default=None, description="changes to editable params, merged into the current params"
    )


class CancelBody(Body):
    reason: str = Field(default="", max_length=10_000)


class ConsumeBody(Body):
    grant: str = Field(min_length=1, max_length=8192)


class ResultBody(Body):
    status: Literal["succeeded", "failed"]
    output_digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    detail: str = Field(default="", max_length=10_000)
