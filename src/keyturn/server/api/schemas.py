"""Request bodies of the REST API. Unknown fields are refused so a typo never silently does nothing."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

ACTION_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_*-]+)*$"

# RFC 8785 (the canonical JSON every digest and ledger leaf uses) represents numbers as IEEE doubles:
# numbers beyond ±(2^53 - 1) would silently change value or not read back the same, so they are refused
# at the door.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 64


def canonical_json_problem(value: Any, path: str, depth: int = 0) -> str | None:
    """Why `value` cannot be canonicalised (RFC 8785), naming the nested path; None when it can."""
    if depth > MAX_DEPTH:
        return f"{path[:80]}…: nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            return f"{path}: integer {value} is outside ±(2^53 - 1); send it as a string"
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{path}: {value} is not a JSON number"
        if abs(value) > MAX_SAFE_INTEGER:
            # canonical JSON writes 1e17 as 100000000000000000, which reads back as an integer outside
            # the safe range: the stored ledger leaf could then not be recomputed
            return f"{path}: number {value:g} is outside ±(2^53 - 1); send it as a string"
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path}: the string contains a lone surrogate (invalid Unicode)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = canonical_json_problem(key, f"{path} (key)", depth + 1) or canonical_json_problem(
                item, f"{path}.{key}", depth + 1
            )
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            problem = canonical_json_problem(item, f"{path}[{index}]", depth + 1)
            if problem:
                return problem
    return None


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _canonical_json(cls, value: Any, info: ValidationInfo) -> Any:
        # Everything a body carries ends up in digests and ledger events: refuse what cannot be
        # canonicalised here, with the path, instead of failing later with a 500.
        problem = canonical_json_problem(value, info.field_name or "body")
        if problem:
            raise ValueError(problem)
        return value


class SubmitBody(Body):
    action: str = Field(min_length=1, max_length=200, pattern=ACTION_PATTERN, examples=["db.export"])
    resource: str = Field(default="", max_length=2000, examples=["postgres://prod/customers"])
    params: dict[str, Any] = Field(default_factory=dict)
    justification: str = Field(default="", max_length=10_000)
    context: dict[str, Any] = Field(default_factory=dict)
    on_behalf_of: str | None = Field(default=None, max_length=320, examples=["user:alice@example.com"])
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class RequesterBody(Body):
    id: str = Field(min_length=1, max_length=320)
    kind: Literal["agent", "human"] = "agent"
    groups: list[str] = Field(default_factory=list)


class EvaluateBody(SubmitBody):
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
