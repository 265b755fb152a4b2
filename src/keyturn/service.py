"""The application core: policy, workflow, store and grants put together.

`Keyturn` is the port every transport calls: the HTTP API, the console, the chat channels, the background
timers. It authorises *who may ask* (reading, listing, the ledger), evaluates policy, asks
`keyturn.workflow` for the transition and persists it in one store transaction. The guarantees themselves
are in `workflow.py`; this module never decides an approval. It knows no transport: refusals are
`keyturn.errors` values that each transport words its own way, and no transport reaches past it into the
store, the policy or the keys.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from keyturn import brokered, metrics, workflow
from keyturn.accounts import Accounts
from keyturn.config import Settings
from keyturn.errors import Conflict, Forbidden, NotFound, ServiceError, Unavailable, Unprocessable
from keyturn.grants import GrantError, GrantIssuer, verify_grant
from keyturn.ledger.live import LiveLedger
from keyturn.model import (
    ActionRequest,
    Principal,
    RequestRecord,
    ReviewDecision,
    Role,
    Status,
    Verdict,
    canonical_json,
)
from keyturn.policy import PolicyHolder
from keyturn.redact import Redactor
from keyturn.signing_keys import KeyRing
from keyturn.store import (
    ConcurrentUpdate,
    DecisionRecord,
    DuplicateIdempotencyKey,
    InvalidCursor,
    Store,
    Subscription,
)
from keyturn.store.chat import ChatAccounts, ChatLink, LinkCodeInvalid
from keyturn.store.outbox import Outbox, OutboxRow

__all__ = [
    "ChatLink",
    "Conflict",
    "Consumed",
    "Forbidden",
    "Keyturn",
    "NotFound",
    "ServiceError",
    "Submission",
    "Submitted",
    "Unavailable",
    "Unprocessable",
]

log = logging.getLogger("keyturn")

Clock = Callable[[], datetime]

OUTBOX_PAGE = 200  # rows the console's outbox page shows per status

_RETRIES = 8  # optimistic-concurrency retries of one review/cancel/consume before giving up


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_request_id() -> str:
    # Time-ordered prefix keeps ids roughly sortable; 80 random bits keep them unguessable.
    return f"req_{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def new_grant_id() -> str:
    return "gr_" + secrets.token_urlsafe(16)


@dataclass(frozen=True)
class Submission:
    action: str
    resource: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    justification: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    on_behalf_of: str | None = None
    idempotency_key: str | None = None
    on_behalf_of_verified: bool = False  # proven by a token-exchange token (keyturn.identity)


@dataclass(frozen=True)
class Consumed:
    record: RequestRecord
    params: dict[str, Any]
    secrets: dict[str, str]


@dataclass(frozen=True)
class Submitted:
    record: RequestRecord
    consumed: Consumed | None = None  # this call consumed the grant (`Keyturn.submit_and_execute`)


class Keyturn:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        policy: PolicyHolder,
        keyring: KeyRing,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self.keyring = keyring
        self.clock = clock
        self.grant_issuer = GrantIssuer(
            lambda: keyring.signing_key("grant"),
            issuer=settings.base_url,
            audience=settings.grant_audience,
            redactor=keyring.redactor(),
        )
        self.live_ledger = LiveLedger(store, settings.ledger.origin)

    @property
    def redactor(self) -> Redactor:
        """Redaction with the server's keyed digests (guarantee 9), for the workflow and every view.
        Only through the key ring's accessor, so the key moves with the other server keys."""
        return self.keyring.redactor()

    # --- policy -------------------------------------------------------------------------------------

    def evaluate(self, request: ActionRequest) -> Verdict:
        started = time.perf_counter()
        verdict = self.policy.current.evaluate(request, self.clock())
        metrics.POLICY_SECONDS.observe(time.perf_counter() - started)
        return verdict

    def dry_run(self, request: ActionRequest, now: datetime | None = None) -> Verdict:
        """What policy would say about `request` (at `now`); records nothing."""
        return self.policy.current.evaluate(request, now or self.clock())

    @property
    def loaded_policy_revision(self) -> str:
        return self.policy.current.revision

    # --- submit -------------------------------------------------------------------------------------

    def submit(self, principal: Principal, submission: Submission) -> RequestRecord:
        return self._submit(principal, submission, execute=False).record

    def submit_and_execute(self, principal: Principal, submission: Submission) -> Submitted:
        """`submit`, and for an action policy allows outright, its grant consumed by the caller in the same
        store write (`workflow.submit_and_consume`): one durable round trip for the common case.

        `Submitted.consumed` is set only when this very call consumed the grant: a replay of the same
        idempotency key answers the stored request without it, so it never hands out a second execution.
        """
        return self._submit(principal, submission, execute=True)

    def _submit(self, principal: Principal, submission: Submission, *, execute: bool) -> Submitted:
        request = ActionRequest(
            action=submission.action,
            resource=submission.resource,
            params=submission.params,
            justification=submission.justification,
            context=submission.context,
            requester=principal,
            on_behalf_of=submission.on_behalf_of,
            on_behalf_of_verified=submission.on_behalf_of_verified,
            idempotency_key=submission.idempotency_key,
        )
        now = self.clock()
        verdict = self.evaluate(request)
        request_id, grant_id = new_request_id(), new_grant_id()
        step = workflow.submit_and_consume if execute else workflow.submit
        transition = step(request_id, request, verdict, now, grant_id, redactor=self.redactor)
        handed_over = self._secrets_for(transition)
        if (
            handed_over is None
        ):  # as consume does: a secret the server cannot hand over leaves the grant unused
            transition = workflow.submit(request_id, request, verdict, now, grant_id, redactor=self.redactor)
        decision = DecisionRecord(
            ts=now,
            request_id=transition.record.id,
            request_digest=request_digest(request),
            decision=verdict.decision.value,
            rules=list(verdict.matched_rule_names),
            policy_revision=verdict.policy_revision,
        )
        try:
            record = self.store.insert_request(transition, decision, None)
        except DuplicateIdempotencyKey as duplicate:
            original = duplicate.record
            if request_digest(original.request) != request_digest(request):
                raise Conflict(
                    "this idempotency_key was already used for a different request",
                    {"field": "idempotency_key", "request_id": original.id},
                ) from None
            return Submitted(original)
        metrics.REQUESTS.labels(decision=verdict.decision.value).inc()
        if record.status is not Status.EXECUTING:
            return Submitted(record)
        metrics.GRANTS.labels(outcome="consumed").inc()
        return Submitted(record, Consumed(record, _approved_params(record), handed_over or {}))

    def _secrets_for(self, transition: workflow.Transition) -> dict[str, str] | None:
        """The brokered secrets a consuming transition hands over; None when one of them has no value."""
        record = transition.record
        if record.status is not Status.EXECUTING or not record.verdict.brokered_secrets:
            return {}
        try:
            return brokered.resolve(self.settings.secrets, record.verdict.brokered_secrets)
        except Unavailable:
            return None

    # --- read ---------------------------------------------------------------------------------------

    def get(self, principal: Principal, request_id: str) -> RequestRecord:
        record = self.store.get(request_id)
        if record is None or not self.may_read(principal, record):
            # The same answer for "absent" and "not yours": ids are not an oracle.
            raise NotFound(f"no request {request_id}")
        return record

    def may_read(self, principal: Principal, record: RequestRecord) -> bool:
        if principal.id in (record.request.requester.id, record.request.on_behalf_of, record.executor):
            return True
        if Role.AUDITOR in principal.roles:
            return True
        route = record.verdict.route
        groups = {g for r in route.requirements for g in r.groups} if route else set()
        return principal.kind.value == "human" and bool(groups & principal.groups)

    def _list(
        self,
        principal: Principal,
        *,
        status: Status | None,
        reviewable: bool,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[RequestRecord], str | None]:
        if reviewable:
            if principal.kind.value != "human":
                return [], None
            records, next_cursor = self.store.list_requests(
                status=Status.PENDING, reviewable_groups=set(principal.groups), limit=limit, cursor=cursor
            )
            now = self.clock()
            return [r for r in records if workflow.may_review(r, principal, now)], next_cursor
        if Role.AUDITOR in principal.roles:
            return self.store.list_requests(status=status, limit=limit, cursor=cursor)
        if principal.kind.value == "human" and principal.groups:
            return self.store.list_requests(
                status=status, reviewable_groups=set(principal.groups), limit=limit, cursor=cursor
            )
        return self.store.list_requests(status=status, requester=principal.id, limit=limit, cursor=cursor)

    def list(
        self,
        principal: Principal,
        *,
        status: Status | None,
        reviewable: bool,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[RequestRecord], str | None]:
        try:
            return self._list(principal, status=status, reviewable=reviewable, limit=limit, cursor=cursor)
        except InvalidCursor as exc:
            raise ServiceError(f"cursor: {exc}", {"field": "query.cursor"}) from exc

    def history(self, record: RequestRecord) -> builtins.list[dict[str, Any]]:
        return [
            {"seq": e.seq, "ts": e.ts, "type": e.type, "actor": e.actor, "payload": e.payload}
            for e in self.store.events_for_request(record.id)
        ]

    # --- transitions --------------------------------------------------------------------------------

    def review(
        self,
        principal: Principal,
        request_id: str,
        decision: ReviewDecision,
        comment: str,
        changes: dict[str, Any] | None,
    ) -> RequestRecord:
        """`changes` is a partial params object merged into the current params (editable fields only)."""
        evaluations: list[DecisionRecord] = []

        def reevaluate(edited: ActionRequest) -> Verdict:
            # An edit is evaluated by policy again (guarantee 5); like every evaluation, it is recorded,
            # whether the edit is then accepted or refused.
            verdict = self.evaluate(edited)
            evaluations.append(
                DecisionRecord(
                    ts=self.clock(),
                    request_id=request_id,
                    request_digest=request_digest(edited),
                    decision=verdict.decision.value,
                    rules=list(verdict.matched_rule_names),
                    policy_revision=verdict.policy_revision,
                )
            )
            return verdict

        def step(record: RequestRecord, now: datetime) -> workflow.Transition:
            edited = None if changes is None else merge_params(workflow.effective_params(record), changes)
            return workflow.review(
                record,
                principal,
                decision,
                comment,
                now,
                edited_params=edited,
                reevaluate=reevaluate,
                grant_id=new_grant_id(),
                redactor=self.redactor,
            )

        try:
            record = self._transition(principal, request_id, step)
        finally:
            for evaluation in evaluations:
                self.store.record_decision(evaluation)
        metrics.REVIEWS.labels(decision=decision.value).inc()
        return record

    def cancel(self, principal: Principal, request_id: str, reason: str = "") -> RequestRecord:
        return self._transition(
            principal,
            request_id,
            lambda r, now: workflow.cancel(r, principal, now, reason, redactor=self.redactor),
        )

    def consume(self, principal: Principal, token: str) -> Consumed:
        now = self.clock()
        try:
            claims = verify_grant(
                token,
                self.keyring.public_key_map("grant"),
                now=now,
                audience=self.settings.grant_audience,
            )
        except GrantError as exc:
            metrics.GRANTS.labels(outcome="invalid").inc()
            raise Forbidden(f"grant refused: {exc}", {"field": "grant"}) from exc
        presented = workflow.GrantPresentation(
            grant_id=claims.jti,
            request_id=claims.rid,
            action=claims.act,
            resource=claims.res,
            params_digest=claims.pdg,
            resource_digest=claims.rdg,
        )

        handed_over: dict[str, str] = {}
        not_holder: list[workflow.GrantNotHolder] = []

        def step(record: RequestRecord, at: datetime) -> workflow.Transition:
            not_holder.clear()
            try:  # refusals come first
                transition = workflow.consume_grant(record, presented, principal, at, redactor=self.redactor)
            except workflow.GrantNotHolder as refused:
                not_holder.append(refused)
                return refused.refusal  # a grant presented by someone else: ledger it, then refuse
            # Brokered secrets are resolved before the consume is stored: a secret the server cannot hand
            # over must leave the grant unused, not strand the request in `executing` with nothing to run.
            handed_over.update(brokered.resolve(self.settings.secrets, record.verdict.brokered_secrets))
            return transition

        try:
            record = self._transition(principal, claims.rid, step, authorise=False)
        except ServiceError:
            metrics.GRANTS.labels(outcome="refused").inc()
            raise
        if not_holder:
            metrics.GRANTS.labels(outcome="refused").inc()
            raise Forbidden(not_holder[0].message, {"code": not_holder[0].code, "field": "grant"})
        metrics.GRANTS.labels(outcome="consumed").inc()
        return Consumed(record=record, params=_approved_params(record), secrets=handed_over)

    def report_result(
        self,
        principal: Principal,
        request_id: str,
        succeeded: bool,
        output_digest: str | None,
        detail: str,
    ) -> RequestRecord:
        def step(record: RequestRecord, now: datetime) -> workflow.Transition:
            transition = workflow.report_result(
                record,
                principal,
                succeeded,
                now,
                output_digest=output_digest,
                detail=detail,
                redactor=self.redactor,
            )
            if not detail:
                return transition
            # the workflow accepted the report: now remove any brokered secret the executor echoed
            scrubbed = self._scrub_brokered_secrets(record, detail)
            return workflow.report_result(
                record,
                principal,
                succeeded,
                now,
                output_digest=output_digest,
                detail=scrubbed,
                redactor=self.redactor,
            )

        return self._transition(principal, request_id, step)

    def _scrub_brokered_secrets(self, record: RequestRecord, detail: str) -> str:
        """An executor that echoes a brokered secret into its result must not put it in the ledger."""
        try:
            values = brokered.resolve(self.settings.secrets, record.verdict.brokered_secrets)
        except Unavailable:
            return detail
        return brokered.scrub(detail, values)

    def tick(self) -> int:
        """Expire and escalate what is due. Safe on several replicas: the store locks what it processes."""
        now = self.clock()
        redactor = self.redactor

        def handle(record: RequestRecord) -> workflow.Transition | None:
            try:
                return workflow.due_transition(record, now, redactor=redactor)
            except workflow.NothingToDo:
                return None

        return self.store.process_due(now, handle)

    def _transition(
        self,
        principal: Principal,
        request_id: str,
        step: Callable[[RequestRecord, datetime], workflow.Transition],
        *,
        authorise: bool = True,
    ) -> RequestRecord:
        for _ in range(_RETRIES):
            record = self.store.get(request_id)
            if record is None or (authorise and not self.may_read(principal, record)):
                raise NotFound(f"no request {request_id}")
            now = self.clock()
            try:
                transition = step(record, now)
            except workflow.RequestExpired as exc:
                self._expire_quietly(record, now)
                raise Conflict(exc.message, {"code": exc.code}) from exc
            except workflow.WorkflowError as exc:
                raise _service_error(exc) from exc
            try:
                return self.store.apply(transition, expected_version=record.version)
            except ConcurrentUpdate:
                continue  # someone else moved the request: decide again on the fresh state
        raise Unavailable(f"request {request_id} is changing too fast; try again")

    def _expire_quietly(self, record: RequestRecord, now: datetime) -> None:
        # the timer or another replica may get there first: then there is nothing left to do
        with contextlib.suppress(workflow.WorkflowError, ConcurrentUpdate):
            self.store.apply(
                workflow.expire(record, now, redactor=self.redactor), expected_version=record.version
            )

    # --- grants -------------------------------------------------------------------------------------

    def grant_token(self, principal: Principal, record: RequestRecord) -> str | None:
        """The signed grant, for the requester only, while it can still be consumed.

        Tokens are minted on demand from the stored grant (same id, same expiry; Ed25519 signatures are
        deterministic), so no bearer credential is ever stored in the database.
        """
        grant = record.grant
        if (
            principal.id != record.request.requester.id
            or grant is None
            or grant.consumed_at is not None
            or not record.status.runnable
        ):
            return None
        params = record.approved_params if record.approved_params is not None else record.request.params
        issued = self.grant_issuer.issue(
            record, grant.id, params, grant.issued_at, grant.expires_at - grant.issued_at
        )
        return issued.token

    def unresolved_secrets(self) -> builtins.list[str]:
        """Configured brokered secrets that have no value now (said at start, not after an approval)."""
        return brokered.unresolved(self.settings.secrets)

    # --- what transports need besides requests -------------------------------------------------------

    def changes(self, request_id: str | None = None) -> AbstractAsyncContextManager[Subscription]:
        """Wake-ups for a request's transitions (made by any replica): what long-polls and streams wait on.
        `None`: any request's (the console's live queue)."""
        return self.store.feed.subscribe(request_id)

    def public_keys(self) -> dict[str, Any]:
        """The JWK set of the keys that sign grants and ledger checkpoints."""
        jwks: dict[str, Any] = self.keyring.jwks()
        return jwks

    def readiness(self) -> builtins.list[str]:
        """What keeps this replica from serving now; empty when it is ready."""
        problems = []
        try:
            self.store.ping()
        except Exception as exc:  # readiness must answer, whatever the database does
            problems.append(f"database: {exc.__class__.__name__}")
        return problems

    def ledger(self, principal: Principal) -> LiveLedger:
        """The live ledger, for auditors only (separation of duties: no other role implies it)."""
        if Role.AUDITOR not in principal.roles:
            raise Forbidden(f"{principal.id} does not have the auditor role")
        return self.live_ledger

    # --- the console's facade: human accounts and the outbox (transports never reach the store) -----

    @functools.cached_property
    def accounts(self) -> Accounts:
        """Console sessions, passkeys (ledgered), login ceremonies and linked chat accounts."""
        return Accounts(self.store, self.clock)

    def outbox_rows(self, principal: Principal, status: str) -> builtins.list[OutboxRow]:
        """The outbox rows of `status` (pending: due or waiting for a retry; dead: gave up), newest first.
        Admins only: a row names targets and carries the last error a channel answered."""
        self._require_admin(principal)
        return Outbox(self.store).list_rows(status=status, limit=OUTBOX_PAGE)

    def retry_outbox(self, principal: Principal, row_id: str) -> None:
        """Make a dead (or cancelled) row due again now, with its own id (a receiver recognises a replay)."""
        self._require_admin(principal)
        if not Outbox(self.store).retry([row_id], self.clock()):
            raise NotFound(f"no dead outbox row {row_id}", {"field": "row"})

    def _require_admin(self, principal: Principal) -> None:
        if Role.ADMIN not in principal.roles:
            raise Forbidden(f"{principal.id} does not have the admin role")

    # --- chat channels: linked chat accounts, replay guard, the request a card shows -----------------

    @functools.cached_property
    def _chat_accounts(self) -> ChatAccounts:
        return ChatAccounts(self.store)

    def chat_account(self, provider: str, team_id: str, user_id: str) -> ChatLink | None:
        """The principal a chat account is linked to (groups are never stored: look them up at review)."""
        return self._chat_accounts.link(provider, team_id, user_id)

    def link_chat_account_by_email(
        self, provider: str, team_id: str, user_id: str, principal_id: str
    ) -> ChatLink:
        """Link an account whose e-mail the chat provider verified; the caller checked the admin allows it."""
        link = ChatLink(provider, team_id, user_id, principal_id, "email", self.clock())
        self._chat_accounts.save_link(link)
        return link

    def chat_link_code(self, provider: str, team_id: str, user_id: str, ttl: timedelta) -> str:
        """A one-time code the chat user redeems while logged in (`redeem_chat_link_code`)."""
        return self._chat_accounts.new_code(provider, team_id, user_id, self.clock(), ttl)

    def redeem_chat_link_code(self, principal: Principal, code: str) -> ChatLink:
        """Link the code's chat account to the authenticated `principal` who presents it."""
        try:
            return self._chat_accounts.redeem(code, principal.id, self.clock())
        except LinkCodeInvalid as exc:
            raise ServiceError(str(exc), {"code": "invalid_link_code", "field": "body.code"}) from exc

    def first_chat_delivery(self, signature: str, timestamp: str) -> bool:
        """True the first time a signed chat request (or Socket Mode envelope) is seen on any replica."""
        return self._chat_accounts.first_sight(signature, timestamp, self.clock())

    def request_on_card(self, request_id: str) -> RequestRecord | None:
        """The request a verified chat click names, whoever clicked: the card already showed it to that
        conversation, and the clicker must be told the workflow's precise reason or the real outcome
        (`get` answers "no request" to anyone who may not read it). Decisions still go through `review`."""
        return self.store.get(request_id)


# Which body field a refusal is about, so a client can point at it.
_REFUSED_FIELDS: dict[type[workflow.WorkflowError], str] = {
    workflow.ReasonRequired: "body.comment",
    workflow.EditRefused: "body.params",
}


def _service_error(exc: workflow.WorkflowError) -> ServiceError:
    """The kind of a lifecycle refusal; `detail.code` keeps the workflow's precise code.

    Unprocessable: the body asks for something the rules refuse (deny without reason, a refused edit);
    Forbidden: this caller may not do this (self review, agent, on-behalf-of, not qualified, step-up,
    not the requester, not the executor); Conflict: the request's state does not allow it (decided,
    expired, grant consumed or mismatched).
    """
    detail: dict[str, Any] = {"code": exc.code}
    for kind, where in _REFUSED_FIELDS.items():
        if isinstance(exc, kind):
            detail["field"] = where
            return Unprocessable(exc.message, detail)
    if isinstance(exc, workflow.ReviewRefused | workflow.NotRequester | workflow.NotExecutor):
        return Forbidden(exc.message, detail)
    return Conflict(exc.message, detail)


def _approved_params(record: RequestRecord) -> dict[str, Any]:
    return record.approved_params if record.approved_params is not None else record.request.params


def merge_params(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Merge a reviewer's partial edit: objects merge key by key, any other value replaces."""
    merged = dict(current)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_params(merged[key], value)
        else:
            merged[key] = value
    return merged


def request_digest(request: ActionRequest) -> str:
    document = {
        "action": request.action,
        "resource": request.resource,
        "params": request.params,
        "context": request.context,
        "justification": request.justification,
        "requester": request.requester.id,
        "on_behalf_of": request.on_behalf_of,
    }
    return "sha256:" + hashlib.sha256(canonical_json(document)).hexdigest()


def expires_in(record: RequestRecord, now: datetime) -> timedelta | None:
    return record.expires_at - now if record.expires_at else None
