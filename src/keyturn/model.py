"""Domain types shared by every part of keyturn.

Everything here is data: immutable pydantic models with no I/O. The policy engine produces `Verdict`s,
the workflow turns requests, reviews and grants into `RequestRecord`s and `Event`s, and the store,
server, channels and CLI only move these values around.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import unicodedata
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, field_validator


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- principals ---------------------------------------------------------------------------------------


class PrincipalKind(StrEnum):
    AGENT = "agent"
    HUMAN = "human"


class Role(StrEnum):
    """Administrative roles. Approving is not a role: it comes from membership of a route's groups."""

    ADMIN = "admin"
    AUDITOR = "auditor"


class AuthMethod(StrEnum):
    """How a principal proved who it is for the call at hand."""

    API_KEY = "api_key"  # agent API key
    WORKLOAD_JWT = "workload_jwt"  # agent token from a configured issuer
    OIDC = "oidc"  # a human's ID token / bearer JWT from the identity provider
    USER_TOKEN = "user_token"  # a users-file token (single machine)
    CONSOLE = "console"  # a console session (login by OIDC or the users file)
    CHAT = "chat"  # a click in a linked Slack / Teams account
    PASSKEY = "passkey"  # a WebAuthn assertion made for this very review
    INTERNAL = "internal"  # the server itself (timers), tests


class PasskeyAssertion(Frozen):
    """A WebAuthn assertion made for one review, with what is needed to check it offline.

    Binary values are lowercase hex: hex never looks like a credential, so ledger redaction (which hides
    credential-looking values anywhere) can never touch a signature.
    """

    key_id: str  # the credential id
    public_key: str  # the COSE public key registered for this credential
    rp_id: str
    origin: str
    authenticator_data: str
    client_data_json: str
    signature: str


class Authentication(Frozen):
    """How and when a principal authenticated: what a `step_up` route asks of a review (DESIGN §3)."""

    method: AuthMethod
    # When the human last proved presence to the identity provider (OIDC `auth_time`) or to keyturn
    # (a passkey assertion); None where nothing says (an API key, a long-lived token).
    at: datetime | None = None
    amr: tuple[str, ...] = ()  # OIDC authentication methods references, as the provider said them
    acr: str | None = None
    passkey: PasskeyAssertion | None = None  # method passkey: the signature over this very review
    expires_at: datetime | None = None  # when the credential stops being valid (a JWT's `exp`), if it says


class Principal(Frozen):
    id: str  # "agent:deploy-bot", "user:alice@example.com"
    kind: PrincipalKind
    groups: frozenset[str] = frozenset()
    roles: frozenset[Role] = frozenset()
    display_name: str | None = None
    authn: Authentication | None = None  # None: unknown, which a step-up route treats as not fresh

    @field_validator("id")
    @classmethod
    def _canonical_id(cls, value: str) -> str:
        # Whoever builds a principal (an authenticator, a chat link, a stored record read back) holds the
        # canonical form, so that even a plain `==` compares one human with one human.
        return fold_principal_id(refuse_nul(value, "id"))


def refuse_nul(value: str, field: str) -> str:
    """`value`, unless it holds U+0000. PostgreSQL cannot store NUL in text while SQLite can: refusing it in
    the model gives every caller (the API and in-process ones alike) the same answer on both backends,
    before anything is written."""
    if "\x00" in value:
        raise ValueError(f"{field}: contains U+0000 (NUL), which no field may contain")
    return value


# --- principal ids: one canonical form ----------------------------------------------------------------
#
# One human must be one principal whatever credential they use (users file, OIDC, a chat link) and however
# the id is spelled: `user:Alice@Example.com` and `user:alice@example.com` are one reviewer (guarantee 3).
# The canonical form: surrounding whitespace stripped, Unicode NFKC (fullwidth letters are ASCII letters, the
# ligature fi is f + i), full case folding of the whole id (`ß` is `ss`), and punycode domain labels decoded
# (`xn--bcher-kva` is `bücher`). `fold_principal_id` computes it and never fails (stored values and every
# comparison go through it); `canonical_principal_id` also refuses ids that are ambiguous (invisible, control
# or space characters, malformed e-mail addresses) and is what every entry point calls.

MAX_PRINCIPAL_ID = 320
_PRINCIPAL_KIND = re.compile(r"[a-z][a-z0-9_-]*")


def fold_principal_id(raw: str) -> str:
    """The canonical spelling of a principal id, without judging it (see `canonical_principal_id`)."""
    text = unicodedata.normalize("NFKC", raw.strip())
    text = unicodedata.normalize("NFKC", text.casefold())  # casefold may leave a non-NFKC string
    kind, colon, name = text.partition(":")
    local, at, domain = name.rpartition("@")
    if colon and at and "xn--" in domain:
        labels = []
        for label in domain.split("."):
            if label.startswith("xn--"):
                with contextlib.suppress(UnicodeError):  # left as it is: canonical_principal_id refuses it
                    label = label.encode("ascii").decode("idna").casefold()
            labels.append(label)
        text = f"{kind}:{local}@{'.'.join(labels)}"
    return text


def principal_id_problem(raw: str) -> str | None:
    """Why `raw` is not an acceptable principal id, or None."""
    folded = fold_principal_id(raw)
    kind, colon, name = folded.partition(":")
    if not colon or not kind or not name:
        return f"a principal id is KIND:NAME, like user:alice@example.com or agent:deploy-bot; got {raw!r}"
    if not _PRINCIPAL_KIND.fullmatch(kind):
        return f"the kind of a principal id is letters, digits, - and _ (like user or agent); got {raw!r}"
    if len(folded) > MAX_PRINCIPAL_ID:
        return f"a principal id is not longer than {MAX_PRINCIPAL_ID} characters"
    for char in name:
        if unicodedata.category(char)[0] in "CZ":  # control, format (zero-width, bidi), unassigned, spaces
            return (
                f"a principal id must not contain invisible, control or space characters"
                f" (U+{ord(char):04X} in {raw!r})"
            )
    if "@" in name:  # an e-mail address: one spelling only
        local, _, domain = name.rpartition("@")
        if "@" in local:
            return f"an e-mail address has exactly one @; got {raw!r}"
        if not local:
            return f"the e-mail address has no local part; got {raw!r}"
        labels = domain.split(".")
        if not domain or any(not label for label in labels):
            return f"the e-mail address has an empty domain or domain label (a trailing dot?); got {raw!r}"
        if any(label.startswith("xn--") for label in labels):
            return f"the e-mail address has a domain label that is not valid punycode; got {raw!r}"
    return None


def canonical_principal_id(raw: str) -> str:
    """The canonical form of a principal id; ValueError (naming the problem) for an ambiguous one."""
    problem = principal_id_problem(raw)
    if problem is not None:
        raise ValueError(problem)
    return fold_principal_id(raw)


def same_identity(a: str | None, b: str | None) -> bool:
    """Whether two principal ids name the same identity: equal canonical forms (fails closed: a spelling
    such as `User:ALICE@…` in fullwidth letters sent as `on_behalf_of` is still alice)."""
    return a is not None and b is not None and fold_principal_id(a) == fold_principal_id(b)


# --- requests and verdicts ----------------------------------------------------------------------------


class ActionRequest(Frozen):
    """What an agent wants to do. `requester` always comes from authentication, never from a body."""

    action: str
    resource: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    justification: str = ""
    context: dict[str, Any] = Field(default_factory=dict)
    requester: Principal
    on_behalf_of: str | None = None
    # True when the agent proved `on_behalf_of` with a token-exchange token (RFC 8693) naming it as actor;
    # False when it only asserted it.
    on_behalf_of_verified: bool = False
    idempotency_key: str | None = None

    @field_validator("action", "resource", "justification", "idempotency_key", "on_behalf_of")
    @classmethod
    def _no_nul(cls, value: str | None, info: Any) -> str | None:
        return None if value is None else refuse_nul(value, str(info.field_name))

    @field_validator("on_behalf_of")
    @classmethod
    def _canonical_on_behalf_of(cls, value: str | None) -> str | None:
        return None if value is None else fold_principal_id(value)

    @field_validator("params", "context")
    @classmethod
    def _canonicalisable(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        # Params and context end up in digests and ledger leaves: refuse, for every caller (the API and
        # in-process ones alike), what RFC 8785 cannot represent exactly.
        problem = canonical_json_problem(value, str(info.field_name))
        if problem:
            raise ValueError(problem)
        return value

    def with_params(self, params: dict[str, Any]) -> ActionRequest:
        return self.model_copy(update={"params": params})


class Decision(StrEnum):
    ALLOW = "allow"
    REVIEW = "review"
    DENY = "deny"

    @property
    def strictness(self) -> int:
        return _STRICTNESS[self]


_STRICTNESS = {Decision.ALLOW: 0, Decision.REVIEW: 1, Decision.DENY: 2}


class Requirement(Frozen):
    """`count` distinct humans from any of `groups` must approve."""

    groups: tuple[str, ...]
    count: int = Field(default=1, ge=1)

    def describe(self) -> str:
        return f"{self.count} from {' or '.join(self.groups)}"


class Escalation(Frozen):
    after: timedelta
    notify: tuple[str, ...] = ()


class Route(Frozen):
    """Who must approve a `review` verdict, and how."""

    requirements: tuple[Requirement, ...]
    ttl: timedelta
    tier: str | None = None
    notify: tuple[str, ...] = ()
    escalate: tuple[Escalation, ...] = ()
    redact: tuple[str, ...] = ()  # dotted paths like "params.connection_string"
    editable: tuple[str, ...] = ()  # dotted paths like "params.rows"
    step_up: bool = False
    # How recent a login (or passkey assertion) must be for a review to count on a step_up route.
    step_up_max_age: timedelta = timedelta(minutes=5)
    signature: str | None = None  # "passkey": an approval counts only signed with a passkey
    grant_ttl: timedelta = timedelta(minutes=5)
    secrets: tuple[str, ...] = ()  # names of brokered secrets handed over with the grant
    executors: tuple[str, ...] = ()  # who may consume the grant ("agent:x", "group:ci"); () = the requester

    def describe(self) -> str:
        return " and ".join(r.describe() for r in self.requirements)


class RuleMatch(Frozen):
    """How one rule answered a request: whether it matched and why."""

    rule: str
    decision: Decision
    matched: bool
    why: str
    source: str = ""  # "policy.yaml:12"
    error: str | None = None  # set when `when` failed at evaluation time (fail closed)
    conditional: bool = False  # the rule has a `when`: it may not match another call of the same action


class Verdict(Frozen):
    decision: Decision
    reason: str | None = None  # for deny
    route: Route | None = None  # for review
    rules: tuple[RuleMatch, ...] = ()  # the rules that matched (or counted as matched, failing closed)
    policy_revision: str = ""
    grant_ttl: timedelta = timedelta(minutes=5)  # for allow; review uses route.grant_ttl
    secrets: tuple[str, ...] = ()  # for allow; review uses route.secrets
    executors: tuple[str, ...] = ()  # for allow; review uses route.executors
    # What every matching rule asks to redact, whatever decision won: a deny that outranks a review rule
    # must not drop that rule's redactions (the submitted event is written either way).
    redact: tuple[str, ...] = ()

    @property
    def matched_rule_names(self) -> tuple[str, ...]:
        return tuple(m.rule for m in self.rules)

    @property
    def brokered_secrets(self) -> tuple[str, ...]:
        """Names of the brokered secrets handed to the executor with the grant."""
        return self.route.secrets if self.route else self.secrets

    @property
    def grant_executors(self) -> tuple[str, ...]:
        """Who may consume the grant instead of the requester (`agent:x`, `group:ci`); () = the requester."""
        return self.route.executors if self.route else self.executors

    @property
    def redactions(self) -> tuple[str, ...]:
        """Dotted paths (``params.x``, ``context.y``, ``justification``) never shown or logged in clear."""
        named = set(self.redact) | set(self.route.redact if self.route else ())
        return tuple(sorted(named))


# --- lifecycle ----------------------------------------------------------------------------------------


class Status(StrEnum):
    PENDING = "pending"
    ALLOWED = "allowed"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def runnable(self) -> bool:
        """A grant for the request may be consumed."""
        return self in (Status.ALLOWED, Status.APPROVED)


TERMINAL_STATUSES = frozenset(
    {Status.DENIED, Status.EXPIRED, Status.CANCELLED, Status.SUCCEEDED, Status.FAILED}
)


class ReviewDecision(StrEnum):
    APPROVE = "approve"
    DENY = "deny"


class Review(Frozen):
    reviewer: str  # canonical principal id
    reviewer_groups: frozenset[str]  # membership at the moment of review
    decision: ReviewDecision
    comment: str = ""
    params: dict[str, Any] | None = None  # edited params, when the reviewer narrowed them
    params_digest: str | None = None  # digest of the params this approval approved
    at: datetime

    @field_validator("reviewer")
    @classmethod
    def _canonical_reviewer(cls, value: str) -> str:
        return fold_principal_id(value)


class GrantRecord(Frozen):
    """The server-side half of a grant: what the signed token refers to."""

    id: str
    request_id: str
    params_digest: str
    issued_at: datetime
    expires_at: datetime
    consumed_at: datetime | None = None


class RequestRecord(Frozen):
    """The whole state of one action request."""

    id: str
    request: ActionRequest
    status: Status
    verdict: Verdict
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None  # review deadline for pending requests
    reviews: tuple[Review, ...] = ()
    approved_params: dict[str, Any] | None = None  # params the grant binds (edited or original)
    grant: GrantRecord | None = None
    escalation_level: int = 0
    executor: str | None = None  # who consumed the grant
    result: dict[str, Any] | None = None
    version: int = 0  # optimistic concurrency: every transition bumps it

    @field_validator("executor")
    @classmethod
    def _canonical_executor(cls, value: str | None) -> str | None:
        return None if value is None else fold_principal_id(value)

    @property
    def route(self) -> Route | None:
        return self.verdict.route


class EventType(StrEnum):
    SUBMITTED = "request.submitted"
    ALLOWED = "request.allowed"
    DENIED = "request.denied"
    PENDING = "request.pending"
    REVIEWED = "request.reviewed"
    PARAMS_EDITED = "request.params_edited"
    APPROVED = "request.approved"
    EXPIRED = "request.expired"
    CANCELLED = "request.cancelled"
    ESCALATED = "request.escalated"
    GRANT_ISSUED = "grant.issued"
    GRANT_CONSUMED = "grant.consumed"
    GRANT_EXPIRED = "grant.expired"
    GRANT_REFUSED = "grant.refused"  # presented by someone the grant is not bound to
    SUCCEEDED = "request.succeeded"
    FAILED = "request.failed"
    # Administration (actor: the admin). No request: `request_id` is None.
    API_KEY_CREATED = "admin.api_key.created"
    API_KEY_REVOKED = "admin.api_key.revoked"
    USER_TOKEN_REVOKED = "admin.user_token.revoked"
    SIGNING_KEY_ROTATED = "admin.signing_key.rotated"
    SIGNING_KEY_RETIRED = "admin.signing_key.retired"
    # A user's passkeys (actor: the user). `passkey.registered` carries the public key every passkey-signed
    # review of theirs is checked against by `keyturn ledger verify`.
    PASSKEY_REGISTERED = "passkey.registered"
    PASSKEY_REVOKED = "passkey.revoked"


class Event(Frozen):
    """One ledger leaf before it gets its sequence number. `payload` is already redacted."""

    type: EventType
    actor: str
    request_id: str | None
    payload: dict[str, Any]
    ts: datetime


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


# --- canonical digests --------------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical bytes of a JSON value."""
    return bytes(rfc8785.dumps(value))


def params_digest(params: dict[str, Any]) -> str:
    """`sha256:<hex>` of the canonical params: what a grant binds."""
    return "sha256:" + hashlib.sha256(canonical_json(params)).hexdigest()
