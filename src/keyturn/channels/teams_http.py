"""The Teams bot's messaging endpoint, `POST /v1/channels/teams/messages`, mounted when Teams is configured.

Every activity is authenticated before anything in it is believed: the Bot Framework JWT in `Authorization`
is validated by the Teams SDK's `TokenValidator` (RS256 signature against the keys of the Bot Framework's
OpenID metadata, issuer, audience = the bot's app id, expiry) and its `serviceurl` claim must be the
activity's `serviceUrl`, so a token Microsoft gave for one service cannot carry an activity claiming another.
The activity must then come from the configured tenant. Only then is `from.aadObjectId` trusted.

An `adaptiveCard/action` invoke (a click on a card) becomes a review through `Keyturn.review`, the one review
path of every surface, so every guarantee holds as on the REST API. The clicking account counts as a keyturn
user only through the users file: the user whose `entra_oid` is the account's Entra object id; the user's
groups and roles come from the users file at that moment, never from Teams. A refused click is answered to
the clicker alone with the card and a line saying why (or only the reason, when the clicker may not see the
request). A replayed activity (the same activity id again) is answered but never reviewed twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import httpx
import jwt
from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from microsoft_teams.api.activities.invoke.adaptive_card import AdaptiveCardInvokeActivity
from microsoft_teams.api.models.adaptive_card import (
    AdaptiveCardActionCardResponse,
    AdaptiveCardActionMessageResponse,
)
from pydantic import ValidationError

from keyturn.channels.teams import VERB_APPROVE, VERB_DENY, VERB_REFRESH, TeamsChannel, build_card
from keyturn.config import TeamsSettings
from keyturn.errors import NotFound, ServiceError
from keyturn.identity.users import UsersFile
from keyturn.model import Authentication, AuthMethod, Principal, RequestRecord, ReviewDecision
from keyturn.service import Keyturn
from keyturn.views import request_view

if TYPE_CHECKING:
    from microsoft_teams.apps.auth.token_validator import TokenValidator

log = logging.getLogger("keyturn.channels.teams")

PATH = "/v1/channels/teams/messages"
MAX_BODY = 256 * 1024  # an invoke activity is a few KB; refuse to parse anything much larger
UNAUTHORIZED = {"error": "unauthorized"}


class InvalidActivityToken(Exception):
    pass


class BotFrameworkTokenValidator:
    """Validates the JWT of an inbound activity with the SDK's `TokenValidator`.

    The signing keys' address (`jwks_uri`) is read from the Bot Framework's OpenID metadata on first use (not
    at start, so the server starts while Microsoft is unreachable); the SDK's JWKS client then caches the
    keys and fetches them again for an unknown `kid` (key rotation). Validation runs in a worker thread: the
    SDK's JWKS client downloads synchronously, which must not stall the server's event loop.
    """

    def __init__(self, settings: TeamsSettings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
        self._validator: TokenValidator | None = None
        self._lock = asyncio.Lock()

    async def _sdk_validator(self) -> TokenValidator:
        async with self._lock:
            if self._validator is None:
                response = await self._http.get(self.settings.openid_metadata_url)
                response.raise_for_status()
                metadata = response.json()
                jwks_uri = metadata.get("jwks_uri") if isinstance(metadata, dict) else None
                if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                    raise ValueError(f"{self.settings.openid_metadata_url} names no jwks_uri")
                token_validator, options = await to_thread.run_sync(_sdk_token_validator)
                self._validator = token_validator(
                    options(
                        valid_issuers=[self.settings.token_issuer],
                        valid_audiences=[self.settings.app_id],
                        jwks_uri=jwks_uri,
                    )
                )
            return self._validator

    async def validate(self, authorization: str | None, service_url: str) -> dict[str, Any]:
        """The token's claims, or `InvalidActivityToken` (the reason is logged, never answered)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidActivityToken("no bearer token")
        try:
            validator = await self._sdk_validator()
        except (httpx.HTTPError, ValueError) as exc:
            raise InvalidActivityToken(f"cannot read the Bot Framework OpenID metadata: {exc}") from exc

        def check() -> dict[str, Any]:
            # `validate_token` is a coroutine that never awaits I/O (its JWKS client is synchronous).
            return asyncio.run(validator.validate_token(token.strip(), service_url))

        try:
            claims = await to_thread.run_sync(check)
        except (jwt.PyJWTError, jwt.PyJWKClientError) as exc:
            raise InvalidActivityToken(str(exc)) from exc
        # The SDK checks `exp` only when it is present: a token that never expires is not accepted here.
        if not isinstance(claims.get("exp"), int | float):
            raise InvalidActivityToken("the token has no expiry")
        return claims

    async def aclose(self) -> None:
        await self._http.aclose()


def _sdk_token_validator() -> tuple[Any, Any]:
    """The SDK's validator, imported on first use: `microsoft_teams.apps` is slow to import (its whole App),
    and announces preview features on import, neither of which a starting server needs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from microsoft_teams.apps.auth.token_validator import JwtValidationOptions, TokenValidator
    return TokenValidator, JwtValidationOptions


class SeenActivities:
    """Activity ids answered lately (bounded): the same activity twice is a replay, never a second review."""

    def __init__(self, size: int = 10_000, ttl: float = 3600.0) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._size = size
        self._ttl = ttl

    def first_time(self, activity_id: str) -> bool:
        now = time.monotonic()
        while self._seen and (
            len(self._seen) >= self._size or next(iter(self._seen.values())) < now - self._ttl
        ):
            self._seen.popitem(last=False)
        if activity_id in self._seen:
            return False
        self._seen[activity_id] = now
        return True


class TeamsInbound:
    """What the endpoint needs: the channel (to update cards), the validator and the replay memory."""

    def __init__(self, channel: TeamsChannel, validator: BotFrameworkTokenValidator) -> None:
        self.channel = channel
        self.validator = validator
        self.seen = SeenActivities()

    async def aclose(self) -> None:
        await self.validator.aclose()
        await self.channel.aclose()


def build_router(inbound: TeamsInbound) -> APIRouter:
    router = APIRouter()

    @router.post(PATH, include_in_schema=False)
    async def messages(request: Request) -> JSONResponse:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return JSONResponse({"error": "activity too large"}, status_code=413)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body is not an activity"}, status_code=400)
        service_url = body.get("serviceUrl")
        if not isinstance(service_url, str) or not service_url:
            # Without it the token's serviceurl claim could not be compared with anything.
            log.warning("Teams activity refused: no serviceUrl")
            return JSONResponse(UNAUTHORIZED, status_code=401)
        try:
            await inbound.validator.validate(request.headers.get("authorization"), service_url)
        except InvalidActivityToken as exc:
            log.warning("Teams activity refused: %s", exc)
            return JSONResponse(UNAUTHORIZED, status_code=401)
        if body.get("type") in ("conversationUpdate", "installationUpdate"):
            _log_conversation(body)
        if body.get("type") != "invoke" or body.get("name") != "adaptiveCard/action":
            return JSONResponse({}, status_code=200)  # messages, installs...: nothing to do
        try:
            activity = AdaptiveCardInvokeActivity.model_validate(body)
        except ValidationError:
            return _message(400, "keyturn could not read this card action.")
        svc: Keyturn = request.app.state.keyturn
        users: UsersFile | None = request.app.state.authenticator.users
        answer = await _invoke(inbound, svc, users, activity)
        return JSONResponse(answer.model_dump(by_alias=True, exclude_none=True, mode="json"))

    return router


Answer = AdaptiveCardActionCardResponse | AdaptiveCardActionMessageResponse


async def _invoke(
    inbound: TeamsInbound, svc: Keyturn, users: UsersFile | None, activity: AdaptiveCardInvokeActivity
) -> Answer:
    settings = inbound.channel.settings
    action = activity.value.action
    verb = action.verb or ""
    request_id = action.data.get("request_id")
    if verb not in (VERB_APPROVE, VERB_DENY, VERB_REFRESH) or not isinstance(request_id, str):
        return _text("keyturn does not know this card action.")
    tenant = _tenant_of(activity)
    if tenant is None or tenant.lower() != settings.tenant_id.lower():
        return _text("This keyturn bot serves another Microsoft Entra tenant; your click was not counted.")
    oid = activity.from_.aad_object_id
    user = users.user_by_entra_oid(oid) if users is not None and oid else None
    if user is None:
        return _text(
            "Your Teams account is not linked to a keyturn user, so your click was not counted. "
            f"Ask a keyturn admin to add `entra_oid: {oid or '?'}` to your entry in the users file."
        )
    # Groups and roles as keyturn's identity source says now; a click proves nothing fresh (step-up).
    principal = user.principal().model_copy(update={"authn": Authentication(method=AuthMethod.CHAT)})

    if verb == VERB_REFRESH:
        return await _current(svc, principal, request_id, None, "You may not see this request.")
    if not inbound.seen.first_time(activity.id):
        said = "This click was already received; it counts once."
        return await _current(svc, principal, request_id, said, said)

    inputs = action.data
    if verb == VERB_DENY:
        decision, comment = ReviewDecision.DENY, _text_input(inputs.get("reason"))
        if not comment:
            return await _refused(svc, principal, request_id, "A denial needs a reason.")
    else:
        decision, comment = ReviewDecision.APPROVE, _text_input(inputs.get("comment"))
    try:
        record = await to_thread.run_sync(svc.review, principal, request_id, decision, comment, None)
    except NotFound:
        return _text("keyturn has no such request, or you may not see it.")
    except ServiceError as exc:
        reason = f"Your {decision.value} was not counted: {exc.message}"
        if exc.detail.get("code") == "step_up_required":
            # The card offers a link for this, not a button (guarantee 10: the workflow refused the click).
            reason += ". Approve it in keyturn, where you log in again."
        return await _refused(svc, principal, request_id, reason)
    # Bring the message up to date for everyone in the conversation now (the refresh and the outbox do
    # too; an update is idempotent), and show the clicker the new card.
    view = request_view(record, base_url=svc.settings.base_url, redactor=svc.redactor)
    if activity.reply_to_id:
        try:
            await inbound.channel.update_card(
                activity.service_url or "",
                activity.conversation.id,
                activity.reply_to_id,
                build_card(view),
            )
        except Exception as exc:  # the review stands; the message catches up on the next update
            log.warning("Teams: could not update the card of %s: %s", request_id, exc)
    done = "approved" if decision is ReviewDecision.APPROVE else "denied"
    return AdaptiveCardActionCardResponse(value=build_card(view, notice=f"You {done} this request."))


async def _refused(svc: Keyturn, principal: Principal, request_id: str, reason: str) -> Answer:
    return await _current(svc, principal, request_id, reason, reason)


async def _current(
    svc: Keyturn, principal: Principal, request_id: str, notice: str | None, hidden: str
) -> Answer:
    """The request's current card with `notice` on top, or only `hidden` when the clicker may not see it."""
    try:
        record = await to_thread.run_sync(svc.get, principal, request_id)
    except NotFound:
        return _text(hidden)
    return _card(svc, record, notice=notice)


def _card(svc: Keyturn, record: RequestRecord, *, notice: str | None = None) -> Answer:
    view = request_view(record, base_url=svc.settings.base_url, redactor=svc.redactor)
    return AdaptiveCardActionCardResponse(value=build_card(view, notice=notice))


def _text(message: str) -> Answer:
    return AdaptiveCardActionMessageResponse(value=message)


def _message(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        AdaptiveCardActionMessageResponse(value=message).model_dump(by_alias=True, mode="json"),
        status_code=status,
    )


def _log_conversation(body: dict[str, Any]) -> None:
    """Say where the bot was just added: the two values a `channels.teams.conversations` entry needs."""
    conversation = body.get("conversation")
    conversation_id = conversation.get("id") if isinstance(conversation, dict) else None
    if isinstance(conversation_id, str):
        # Warning level: the server configures no logging of its own, and an admin needs to see this line.
        log.warning(
            "Teams: bot added to conversation_id %r, service_url %r (for channels.teams.conversations)",
            conversation_id.split(";")[0][:200],
            str(body.get("serviceUrl"))[:200],
        )


def _text_input(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _tenant_of(activity: AdaptiveCardInvokeActivity) -> str | None:
    tenant = activity.conversation.tenant_id
    data = activity.channel_data
    if data is not None and data.tenant is not None and data.tenant.id:
        if tenant is not None and tenant.lower() != data.tenant.id.lower():
            return None  # two different tenants in one activity: believe neither
        tenant = data.tenant.id
    return tenant


__all__ = ["PATH", "BotFrameworkTokenValidator", "TeamsInbound", "build_router", "mount"]


def mount(app: Any, settings: TeamsSettings | None) -> TeamsInbound | None:
    """Add the endpoint to `app` when Teams is configured. `ConfigError` (one line) when the bot's secret
    has no value: the channel refuses to start half-configured (the settings require app id and tenant)."""
    if settings is None:
        return None
    inbound = TeamsInbound(TeamsChannel(settings), BotFrameworkTokenValidator(settings))
    app.include_router(build_router(inbound))
    app.state.teams = inbound
    return inbound
