"""Request bodies of the REST API. Unknown fields are refused so a typo never silently does nothing."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from keyturn.model import canonical_json_problem, canonical_principal_id

ACTION_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_*-]+)*$"


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
