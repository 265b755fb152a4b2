"""Slack interactivity (`POST /v1/channels/slack/interactivity`) and chat account linking (`/v1/chat/links`).

Mounted only when `channels.slack` is configured. Order of checks on every inbound request, before
anything is parsed: the body is read raw, its `X-Slack-Signature` is verified with slack_sdk's
`SignatureVerifier` (HMAC-SHA256 under the signing secret, timestamp within 5 minutes), then the signature
is remembered in the database so that the same signed request is refused on every replica (replay).

A click never decides anything by itself: it opens a modal, and the modal's submission becomes a review
through `Keyturn.review`, the one review path the REST API uses (guarantee 11). Before a modal opens, the
click is checked with the workflow's own pure `review` function (nothing is stored), so a person the
workflow would refuse is told why at once, in an ephemeral message, instead of after filling a form.

Identity: the Slack user (team id, user id) must be linked to a principal (`keyturn chat link CODE`, or a
verified e-mail when `link_by_email` is on); the principal's kind and groups are looked up in keyturn's
identity source at that moment (`keyturn.identity.directory`), never taken from Slack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from anyio import to_thread
from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field
from slack_sdk.signature import SignatureVerifier

from keyturn import workflow
from keyturn.channels.base import DeliveryFailed
from keyturn.channels.slack import (
    APPROVE,
    APPROVE_VIEW,
    COMMENT_BLOCK,
    COMMENT_INPUT,
    DENY,
    DENY_VIEW,
    PARAM_BLOCK_PREFIX,
    PARAM_INPUT,
    PROVIDER,
    SlackChannel,
    approve_modal,
    deny_modal,
    lookup,
    outcome_summary,
)
from keyturn.config import Settings, read_secret
from keyturn.errors import NotFound, ServiceError
from keyturn.identity.directory import Directory
from keyturn.identity.users import UsersFile
from keyturn.model import Authentication, AuthMethod, Principal, RequestRecord, ReviewDecision, Status
from keyturn.redact import redact_params
from keyturn.server.deps import Human
from keyturn.server.errors import error_response
from keyturn.service import ChatLink, Keyturn
from keyturn.views import request_view, review_url

log = logging.getLogger("keyturn.channels.slack")

INTERACTIVITY_PATH = "/v1/channels/slack/interactivity"
MAX_BODY = 256 * 1024  # Slack payloads are a few kB; a larger body is not Slack's
LINK_CODE_TTL = timedelta(minutes=15)

INTERACTIONS = Counter(
    "keyturn_slack_interactions_total",
    "Slack interactivity requests, by outcome (refused_signature, replayed, click, submitted, refused, ...)",
    ["outcome"],
)


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=8, max_length=200, description="the one-time code Slack showed you")


class _Refusal(Exception):
    """The clicking Slack user cannot act as a reviewer; `message` tells them why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def build_router(settings: Settings) -> APIRouter:
    """The Slack endpoints. Raises `ConfigError` (one line at start) when a Slack credential is missing."""
    slack = settings.channels.slack
    assert slack is not None, "mount the Slack router only when channels.slack is configured"
    verifier = SignatureVerifier(read_secret(slack.signing_secret, "channels.slack.signing_secret"))
    token = read_secret(slack.bot_token, "channels.slack.bot_token")
    app_token = read_secret(slack.app_token, "channels.slack.app_token") if slack.app_token else None

    def wiring(app: Any) -> Wiring:
        """The Slack side's composition root (once per app). Chat links, the replay guard and the request a
        click names all come from the service (`Keyturn.chat_*`, `request_on_card`), never the store."""
        existing: Wiring | None = getattr(app.state, "slack_wiring", None)
        if existing is None:
            existing = Wiring(
                svc=app.state.keyturn,
                # Only for calls answering a click (modal, ephemeral, card update): outcome DMs are the
                # dispatcher's, so this channel needs no chat-account lookups of its own.
                channel=SlackChannel(slack, token),
                directory=Directory(_users(app)),
            )
            app.state.slack_wiring = existing
        return existing

    @asynccontextmanager
    async def socket_mode(app: Any) -> AsyncIterator[None]:
        """Socket Mode: Slack delivers the same interactions over a WebSocket the server opens (no ingress
        needed). The connection is authenticated by the app-level token, so there is no request signature;
        envelope ids are remembered like signatures, so a redelivered envelope is handled once."""
        from slack_sdk.socket_mode.aiohttp import SocketModeClient
        from slack_sdk.socket_mode.request import SocketModeRequest
        from slack_sdk.socket_mode.response import SocketModeResponse

        assert app_token is not None
        wired = wiring(app)
        client = SocketModeClient(app_token=app_token, web_client=wired.channel.client)

        async def on_request(client: SocketModeClient, request: SocketModeRequest) -> None:
            envelope = str(request.envelope_id)
            fresh = await to_thread.run_sync(wired.svc.first_chat_delivery, f"socket:{envelope}", "0")
            background = BackgroundTasks()
            answer: dict[str, Any] | None = None
            if fresh and request.type == "interactive" and isinstance(request.payload, dict):
                handler = Interaction(settings, wired, background)
                response = await handler.dispatch(request.payload)
                if response.body:
                    answer = json.loads(bytes(response.body))
                    if not isinstance(answer, dict) or "response_action" not in answer:
                        answer = None
            elif not fresh:
                INTERACTIONS.labels(outcome="replayed").inc()
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=envelope, payload=answer))
            await background()

        client.socket_mode_request_listeners.append(on_request)  # type: ignore[arg-type]
        # connect() retries until Slack answers; the server must not wait for that to start serving
        connecting = asyncio.create_task(client.connect())  # type: ignore[no-untyped-call]
        try:
            yield
        finally:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            await client.close()  # type: ignore[no-untyped-call]

    router = APIRouter(tags=["slack"], lifespan=socket_mode if app_token else None)

    @router.post(INTERACTIVITY_PATH, include_in_schema=False)
    async def interactivity(request: Request, background: BackgroundTasks) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            INTERACTIONS.labels(outcome="refused_signature").inc()
            return error_response(413, "too_large", "request body too large")
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        if not timestamp.isdigit() or not signature or not verifier.is_valid(body, timestamp, signature):
            INTERACTIONS.labels(outcome="refused_signature").inc()
            return error_response(401, "invalid_signature", "Slack signature missing, invalid or too old")
        wired = wiring(request.app)
        if not await to_thread.run_sync(wired.svc.first_chat_delivery, signature, timestamp):
            INTERACTIONS.labels(outcome="replayed").inc()
            return error_response(401, "replayed", "this signed Slack request was seen before")
        # Only now is the body parsed: it is Slack's, and seen once.
        try:
            payload = json.loads(parse_qs(body.decode("utf-8"))["payload"][0])
            kind = payload["type"]
        except (UnicodeDecodeError, KeyError, IndexError, ValueError, TypeError):
            return error_response(400, "bad_request", "expected a form field `payload` holding JSON")
        if not isinstance(kind, str):
            return error_response(400, "bad_request", "expected a Slack interaction payload")
        handler = Interaction(settings, wired, background)
        return await handler.dispatch(payload)

    @router.post("/v1/chat/links", tags=["chat"], summary="Link the chat account of a one-time code to you")
    def link(body: LinkBody, who: Human, request: Request) -> Any:
        try:
            made = wiring(request.app).svc.redeem_chat_link_code(who, body.code)
        except ServiceError as exc:
            return error_response(400, "invalid_link_code", exc.message, {"field": "body.code"})
        log.info("linked %s account %s/%s to %s", made.provider, made.team_id, made.user_id, who.id)
        return _link_json(made)

    @router.get("/v1/chat/links", tags=["chat"], summary="Your linked chat accounts")
    def links(who: Human, request: Request) -> dict[str, Any]:
        return {"items": [_link_json(link) for link in wiring(request.app).svc.accounts.chat_links(who)]}

    @router.delete(
        "/v1/chat/links/{provider}/{team_id}/{user_id}", tags=["chat"], summary="Unlink one of your accounts"
    )
    def unlink(provider: str, team_id: str, user_id: str, who: Human, request: Request) -> Any:
        try:
            wiring(request.app).svc.accounts.unlink_chat(who, provider, team_id, user_id)
        except NotFound:
            return error_response(
                404, "not_found", f"no linked {provider} account {team_id}/{user_id} of yours"
            )
        return {"unlinked": True}

    return router


def _users(app: Any) -> UsersFile | None:
    users: UsersFile | None = getattr(app.state.authenticator, "users", None)
    return users


def _link_json(link: ChatLink) -> dict[str, Any]:
    return {
        "provider": link.provider,
        "team_id": link.team_id,
        "user_id": link.user_id,
        "principal_id": link.principal_id,
        "method": link.method,
        "linked_at": link.linked_at.isoformat(),
    }


@dataclass(frozen=True)
class Wiring:
    svc: Keyturn  # reviews go through `svc.review`, the one review path; chat links through `svc.chat_*`
    channel: SlackChannel
    directory: Directory


class Interaction:
    """One verified interactivity request."""

    def __init__(self, settings: Settings, wired: Wiring, background: BackgroundTasks) -> None:
        self.settings = settings
        self.svc = wired.svc
        self.channel = wired.channel
        self.directory = wired.directory
        self.background = background

    async def dispatch(self, payload: dict[str, Any]) -> Response:
        kind = payload.get("type")
        try:
            if kind == "block_actions":
                return await self.click(payload)
            if kind == "view_submission":
                return await self.submit(payload)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            log.warning("unexpected Slack %s payload: %r", kind, exc)
            return error_response(400, "bad_request", "unexpected Slack payload")
        return Response(status_code=200)

    # --- who is clicking -----------------------------------------------------------------------------

    async def principal(self, team: str, user: str, *, offer_code: bool) -> Principal:
        slack = self.channel.settings
        link = await to_thread.run_sync(self.svc.chat_account, PROVIDER, team, user)
        if link is not None and link.method == "email" and not slack.link_by_email:
            link = None  # e-mail links count only while the admin keeps e-mail matching on
        if link is None and slack.link_by_email:
            link = await self._link_by_email(team, user)
        if link is None:
            if not offer_code:
                raise _Refusal(
                    "Your Slack account is not linked to a keyturn identity; click the card again."
                )
            code = await to_thread.run_sync(self.svc.chat_link_code, PROVIDER, team, user, LINK_CODE_TTL)
            minutes = int(LINK_CODE_TTL.total_seconds() // 60)
            raise _Refusal(
                "Your Slack account is not linked to a keyturn identity yet, so this click was not counted. "
                "Link it once, logged in as yourself: "
                f"`keyturn chat link {code} --url {self.settings.base_url}` "
                f'(or POST {{"code": "{code}"}} to {self.settings.base_url}/v1/chat/links). '
                f"The code works once, for {minutes} minutes."
            )
        found = self.directory.lookup(link.principal_id, Authentication(method=AuthMethod.CHAT))
        if found is None:
            raise _Refusal(
                f"Your Slack account is linked to {link.principal_id}, whom keyturn's identity source (the "
                "users file) does not list, so your groups cannot be checked; review with the CLI or API."
            )
        return found

    async def _link_by_email(self, team: str, user: str) -> ChatLink | None:
        try:
            email = await self.channel.verified_email(user, team)
        except DeliveryFailed as exc:
            log.warning("Slack e-mail lookup for %s/%s failed: %s", team, user, exc)
            return None
        if email is None:
            return None
        principal = self.directory.lookup(f"user:{email}")
        if principal is None:
            return None
        return await to_thread.run_sync(
            self.svc.link_chat_account_by_email, PROVIDER, team, user, principal.id
        )

    # --- a button on the card ------------------------------------------------------------------------

    async def click(self, payload: dict[str, Any]) -> Response:
        action = payload["actions"][0]
        action_id = action.get("action_id")
        if action_id not in (APPROVE, DENY):
            return Response(status_code=200)  # the console link, or a button of another version
        INTERACTIONS.labels(outcome="click").inc()
        team, user = _team_user(payload)
        conversation = (payload.get("container") or {}).get("channel_id") or (
            payload.get("channel") or {}
        ).get("id")
        message_ts = (payload.get("container") or {}).get("message_ts") or (payload.get("message") or {}).get(
            "ts"
        )
        request_id = str(action.get("value", ""))
        decision = ReviewDecision.APPROVE if action_id == APPROVE else ReviewDecision.DENY

        def tell(text: str) -> None:
            if conversation:
                self.background.add_task(self._ephemeral, conversation, user, text)

        try:
            principal = await self.principal(team, user, offer_code=True)
        except _Refusal as refusal:
            INTERACTIONS.labels(outcome="refused").inc()
            tell(refusal.message)
            return Response(status_code=200)
        record = await to_thread.run_sync(self.svc.request_on_card, request_id)
        if record is None:
            tell(f"keyturn has no request {request_id}.")
            return Response(status_code=200)
        view = request_view(record, base_url=self.settings.base_url, redactor=self.svc.redactor)
        if record.status is not Status.PENDING:
            # Decided elsewhere (API, CLI, another card): show the real outcome on this card too.
            if conversation and message_ts:
                self.background.add_task(self._update, conversation, message_ts, view)
            tell(f"This request is already {outcome_summary(view)}.")
            return Response(status_code=200)
        refused = _precheck(record, principal, decision, str(view["review_url"]))
        if refused is not None:
            INTERACTIONS.labels(outcome="refused").inc()
            tell(refused)
            return Response(status_code=200)
        metadata = json.dumps({"r": request_id, "c": conversation or "", "t": message_ts or ""})
        if decision is ReviewDecision.APPROVE:
            current = redact_params(workflow.effective_params(record), record.verdict.redactions)
            modal = approve_modal(view, current, metadata)
        else:
            modal = deny_modal(view, metadata)
        try:
            await self.channel.open_modal(str(payload["trigger_id"]), modal)
        except DeliveryFailed as exc:
            log.warning("Slack views.open failed: %s", exc)
            tell("Slack did not open the review form; please click again.")
        return Response(status_code=200)

    # --- the modal's submit button -------------------------------------------------------------------

    async def submit(self, payload: dict[str, Any]) -> Response:
        view = payload["view"]
        callback = view.get("callback_id")
        if callback not in (APPROVE_VIEW, DENY_VIEW):
            return Response(status_code=200)
        team, user = _team_user(payload)
        metadata = json.loads(view.get("private_metadata") or "{}")
        request_id = str(metadata["r"])
        values: dict[str, dict[str, dict[str, Any]]] = (view.get("state") or {}).get("values") or {}
        comment = str((values.get(COMMENT_BLOCK, {}).get(COMMENT_INPUT) or {}).get("value") or "")
        decision = ReviewDecision.APPROVE if callback == APPROVE_VIEW else ReviewDecision.DENY
        try:
            principal = await self.principal(team, user, offer_code=False)
        except _Refusal as refusal:
            INTERACTIONS.labels(outcome="refused").inc()
            return _modal_error(COMMENT_BLOCK, refusal.message)
        record = await to_thread.run_sync(self.svc.request_on_card, request_id)
        if record is None:
            return _modal_error(COMMENT_BLOCK, f"keyturn has no request {request_id}")
        if record.status is not Status.PENDING:
            self._refresh_card(request_id, metadata)
            outcome = outcome_summary(
                request_view(record, base_url=self.settings.base_url, redactor=self.svc.redactor)
            )
            return _modal_error(COMMENT_BLOCK, f"This request is already {outcome}.")
        # The service decides; asking the workflow first only gets the person its precise reason (the
        # service answers "no request" to someone who may not read the request at all).
        refused = _precheck(record, principal, decision, review_url(self.settings.base_url, request_id))
        if refused is not None:
            INTERACTIONS.labels(outcome="refused").inc()
            return _modal_error(COMMENT_BLOCK, refused)
        changes, bad = _edits(record, values) if decision is ReviewDecision.APPROVE else (None, None)
        if bad is not None:
            return _modal_error(*bad)
        try:
            decided = await to_thread.run_sync(
                self.svc.review, principal, request_id, decision, comment, changes
            )
        except ServiceError as exc:
            INTERACTIONS.labels(outcome="refused").inc()
            if exc.detail.get("code") in ("not_pending", "request_expired"):
                self._refresh_card(request_id, metadata)
            where = COMMENT_BLOCK
            if exc.detail.get("field") == "body.params" and changes:
                where = next((k for k in values if k.startswith(PARAM_BLOCK_PREFIX)), COMMENT_BLOCK)
            return _modal_error(where, exc.message)
        INTERACTIONS.labels(outcome="submitted").inc()
        if metadata.get("c") and metadata.get("t"):
            shown = request_view(decided, base_url=self.settings.base_url, redactor=self.svc.redactor)
            self.background.add_task(self._update, str(metadata["c"]), str(metadata["t"]), shown)
        return Response(status_code=200)  # an empty 200 closes the modal

    # --- Slack calls made after the answer -----------------------------------------------------------

    def _refresh_card(self, request_id: str, metadata: dict[str, Any]) -> None:
        async def refresh() -> None:
            record = await to_thread.run_sync(self.svc.request_on_card, request_id)
            if record is not None and metadata.get("c") and metadata.get("t"):
                view = request_view(record, base_url=self.settings.base_url, redactor=self.svc.redactor)
                await self._update(str(metadata["c"]), str(metadata["t"]), view)

        self.background.add_task(refresh)

    async def _update(self, conversation: str, ts: str, view: dict[str, Any]) -> None:
        try:
            await self.channel.update_card(conversation, ts, view)
        except DeliveryFailed as exc:
            # The outbox updates the card on the transition too; this immediate update is a courtesy.
            log.warning("Slack chat.update of %s/%s failed: %s", conversation, ts, exc)

    async def _ephemeral(self, conversation: str, user: str, text: str) -> None:
        try:
            await self.channel.ephemeral(conversation, user, text)
        except DeliveryFailed as exc:
            log.warning("Slack chat.postEphemeral to %s failed: %s", user, exc)


def _team_user(payload: dict[str, Any]) -> tuple[str, str]:
    user = payload["user"]
    team = (payload.get("team") or {}).get("id") or user.get("team_id")
    if not team or not user.get("id"):
        raise KeyError("team or user")
    return str(team), str(user["id"])


def _precheck(
    record: RequestRecord, principal: Principal, decision: ReviewDecision, review_url: str
) -> str | None:
    """Why the workflow would refuse this person's decision, from its own rule (`review_refusal`, the one
    the service applies); nothing is stored. What the modal adds (a deny's reason, an edit) is checked by
    the review itself."""
    refusal = workflow.review_refusal(record, principal, datetime.now(UTC), decision)
    if refusal is None:
        return None
    if isinstance(refusal, workflow.StepUpRequired):
        return f"{refusal.message}. Open the request in keyturn to approve it: {review_url}"
    return refusal.message


def _edits(
    record: RequestRecord, values: dict[str, dict[str, dict[str, Any]]]
) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """The reviewer's changes as a partial params object (only fields whose text changed), or an error."""
    shown = redact_params(workflow.effective_params(record), record.verdict.redactions)
    changes: dict[str, Any] = {}
    for block_id, inputs in values.items():
        if not block_id.startswith(PARAM_BLOCK_PREFIX):
            continue
        path = block_id.removeprefix(PARAM_BLOCK_PREFIX)
        text = (inputs.get(PARAM_INPUT) or {}).get("value")
        if text is None or not str(text).strip():
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = str(text)  # a bare word is a string; JSON is needed only for numbers, lists, objects
        if value == lookup(shown, path):
            continue
        parts = path.split(".")
        if parts[0] == "params":
            parts = parts[1:]
        if not parts:
            return None, (block_id, "this field cannot be edited")
        target = changes
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return (changes or None), None


def _modal_error(block_id: str, message: str) -> JSONResponse:
    return JSONResponse({"response_action": "errors", "errors": {block_id: message[:2000]}})
