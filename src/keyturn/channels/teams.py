"""Microsoft Teams: approval cards posted and kept up to date by a bot (DESIGN §3 "Approver channels").

Built on Microsoft's Teams SDK for Python (`microsoft-teams-api`, `microsoft-teams-cards`,
`microsoft-teams-apps`, v2), the maintained successor of the archived botbuilder, rather than on the
Microsoft 365 Agents SDK: its pieces fit a channel embedded in keyturn's own FastAPI app one by one (typed
activity and Adaptive Card models, an httpx-based Bot Connector client, the inbound token validator), without
its App/hosting layer; the Agents SDK's Teams extension itself depends on these same `microsoft-teams-api`
models, and would bring aiohttp and its own hosting on top. Only the glue is written here:

- the card (`build_card`): an Adaptive Card 1.5 with `Action.Execute` Approve / Deny (Deny opens a
  required reason), everything the redacted view says, and a `refresh` action so every viewer sees the
  current state; on a `step_up` route Approve is an `Action.OpenUrl` to the request's page, since a chat
  click cannot prove a fresh login (guarantee 10);
- the bot's own token: the client-credentials grant of the bot's Entra app in its tenant, through MSAL
  (the library the SDK's own TokenManager uses), behind the SDK's `TokenProviderProtocol`;
- `post` / `update` through the SDK's `ApiClient` (Bot Connector `POST`/`PUT .../activities`), with the
  connector's answers turned into `DeliveryFailed` (Retry-After honoured, 4xx permanent).

The inbound side (the invoke endpoint, token validation, the mapping of the clicking user) is
`keyturn.channels.teams_http`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import warnings
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import msal
from microsoft_teams.api import ApiClient
from microsoft_teams.api.activities.message import MessageActivityInput
from microsoft_teams.api.auth.cloud_environment import PUBLIC, with_overrides
from microsoft_teams.cards import (
    ActionSet,
    AdaptiveCard,
    ExecuteAction,
    Fact,
    FactSet,
    OpenUrlAction,
    RefreshDefinition,
    RichTextBlock,
    ShowCardAction,
    TextBlock,
    TextInput,
    TextRun,
)
from microsoft_teams.common import ClientOptions

from keyturn.channels.base import Delivery, DeliveryFailed, DeliveryKind, MessageRef
from keyturn.config import TeamsConversation, TeamsSettings, read_secret

log = logging.getLogger("keyturn.channels.teams")

VERB_APPROVE = "approve"
VERB_DENY = "deny"
VERB_REFRESH = "refresh"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_PARAMS_TEXT = 3000  # a card is limited to ~28 KB; params beyond this are cut (the API has them all)

_HEADLINES = {
    "pending": "Approval needed",
    "approved": "Approved",
    "denied": "Denied",
    "expired": "Expired (nobody approved in time)",
    "cancelled": "Cancelled by the requester",
    "executing": "Approved, running",
    "succeeded": "Approved, ran successfully",
    "failed": "Approved, the run failed",
    "allowed": "Allowed by policy",
}


# --- the card ----------------------------------------------------------------------------------------


def build_card(view: Mapping[str, Any], *, notice: str | None = None) -> AdaptiveCard:
    """The Adaptive Card 1.5 for one request, from its redacted view (`keyturn.views.request_view`).

    Pending: Approve / Deny buttons (`Action.Execute`, verbs `approve` / `deny`, data `{request_id}`);
    decided: the outcome and who decided, no buttons. `notice` is a line for the one person who clicked
    (e.g. why their click was refused); the card everyone sees has none.
    """
    request_id = str(view["id"])
    status = str(view["status"])
    pending = status == "pending"
    verdict = view.get("verdict") or {}
    step_up = bool(verdict.get("step_up"))

    body: list[Any] = [
        TextBlock(
            text=f"{_HEADLINES.get(status, status)}: {view['action']}",
            size="Large",
            weight="Bolder",
            wrap=True,
            color="Attention" if status in ("denied", "expired", "failed") else "Default",
        )
    ]
    if notice:
        body.append(_rich(_run(notice, weight="Bolder", color="Warning")))
    requester = view.get("requester") or {}
    # Everything the agent wrote (resource, justification, params...) goes into TextRuns, which Adaptive
    # Cards never read as Markdown: a "[click here](…)" justification stays literal text, not a link.
    body.append(_field("Requester", str(requester.get("id", ""))))
    body.append(_field("On behalf of", str(view.get("on_behalf_of") or "nobody")))
    body.append(_field("Action", str(view["action"])))
    body.append(_field("Resource", str(view.get("resource") or "(none)")))
    facts = [
        Fact(title="Tier", value=str(verdict.get("tier") or "default")),
        Fact(title="Status", value=status),
    ]
    if pending:
        still = view.get("still_needed") or []
        facts.append(Fact(title="Still needed", value=", ".join(still) if still else "nothing"))
        if view.get("expires_at"):
            facts.append(Fact(title="Expires", value=_when(str(view["expires_at"]))))
    if step_up:
        facts.append(Fact(title="Step-up", value="approving needs a fresh login in keyturn"))
    body.append(FactSet(facts=facts))
    body.append(_heading("Justification"))
    body.append(_rich(_run(str(view.get("justification") or "(none given)"))))
    body.append(_heading("Parameters"))
    body.append(_rich(_run(_params_text(view.get("params") or {}), font_type="Monospace")))
    approved = view.get("approved_params")
    if approved is not None and approved != view.get("params"):
        body.append(_heading("Approved parameters (edited by a reviewer)"))
        body.append(_rich(_run(_params_text(approved), font_type="Monospace")))
    reviews = view.get("reviews") or []
    if reviews:
        body.append(_heading("Reviews"))
        for review in reviews:
            verb = "approved" if review.get("decision") == "approve" else "denied"
            said = f": {review['comment']}" if review.get("comment") else ""
            body.append(_rich(_run(str(review["reviewer"]), weight="Bolder"), _run(f" {verb}{said}")))
    body.append(ActionSet(actions=[OpenUrlAction(title="Open in keyturn", url=str(view["review_url"]))]))

    data = {"request_id": request_id}
    actions: list[Any] = []
    if pending:
        comment = TextInput(
            id="comment", label="Comment (optional)", is_multiline=True, placeholder="Why you decide so"
        )
        body.append(comment)
        if step_up:
            approve: Any = OpenUrlAction(
                title="Approve in keyturn (fresh login)", url=str(view["review_url"])
            )
        else:
            approve = ExecuteAction(title="Approve", verb=VERB_APPROVE, data=dict(data), style="positive")
        deny_card = AdaptiveCard(
            version="1.5",
            body=[
                TextInput(
                    id="reason",
                    label="Reason for the denial",
                    is_required=True,
                    error_message="A denial needs a reason",
                    is_multiline=True,
                )
            ],
            actions=[ExecuteAction(title="Deny", verb=VERB_DENY, data=dict(data), style="destructive")],
        )
        actions = [approve, ShowCardAction(title="Deny…", card=deny_card)]

    card = AdaptiveCard(
        version="1.5",
        fallback_text=f"keyturn: {_HEADLINES.get(status, status)}: {view['action']} ({request_id})",
        body=body,
        actions=actions or None,
        # Every viewer's client asks the bot for the current card when it shows this one, so a decision
        # made anywhere (REST, CLI, console, Slack) shows here even before the update reaches the message.
        refresh=RefreshDefinition(action=ExecuteAction(verb=VERB_REFRESH, data=dict(data))),
    )
    return card


def card_json(card: AdaptiveCard) -> dict[str, Any]:
    """The card as Teams receives it (camelCase, no nulls)."""
    dumped: dict[str, Any] = card.model_dump(by_alias=True, exclude_none=True)
    return dumped


def card_activity(card: AdaptiveCard) -> MessageActivityInput:
    return MessageActivityInput().add_card(card)


def test_card(target: str) -> AdaptiveCard:
    """What `keyturn channels test teams:NAME` posts."""
    return AdaptiveCard(
        version="1.5",
        body=[
            TextBlock(text="keyturn test message", weight="Bolder", size="Large", wrap=True),
            TextBlock(text=f"Approval cards for {target} will appear here.", wrap=True),
        ],
    )


def _params_text(params: Any) -> str:
    text = json.dumps(params, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    if len(text) > MAX_PARAMS_TEXT:
        text = text[:MAX_PARAMS_TEXT] + "\n… (cut: open the request in keyturn for the rest)"
    return text


def _run(text: str, **style: Any) -> TextRun:
    return TextRun(text=text, **style)


def _rich(*runs: TextRun) -> RichTextBlock:
    return RichTextBlock(inlines=list(runs))


def _field(label: str, value: str) -> RichTextBlock:
    return _rich(_run(f"{label}: ", weight="Bolder"), _run(value))


def _heading(text: str) -> TextBlock:
    return TextBlock(text=text, weight="Bolder", wrap=True, spacing="Medium")


def _when(iso: str) -> str:
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


# --- the bot's own token -----------------------------------------------------------------------------


class EntraAppTokenProvider:
    """The bot's access token for the Bot Connector: client credentials of its Entra app, in its own tenant
    (a single-tenant bot), from MSAL, which caches it until shortly before it expires.

    Implements the SDK's `TokenProviderProtocol` (`get_app_token`), which `ApiClient` calls before each
    request. MSAL is synchronous and talks to Entra on first use, so it runs in a worker thread, created
    lazily: a server starts even while Entra is unreachable, and the first delivery retries.
    """

    def __init__(self, settings: TeamsSettings, secret: str) -> None:
        self._settings = settings
        self._secret = secret
        self._lock = threading.Lock()
        self._app: msal.ConfidentialClientApplication | None = None

    def _client(self) -> msal.ConfidentialClientApplication:
        with self._lock:
            if self._app is None:
                self._app = msal.ConfidentialClientApplication(
                    self._settings.app_id,
                    client_credential=self._secret,
                    authority=f"{self._settings.login_url.rstrip('/')}/{self._settings.tenant_id}",
                    # The authority is the configured one; no look-up at Microsoft of whether it is known.
                    instance_discovery=False,
                )
            return self._app

    def _acquire(self, scope: str) -> str:
        try:
            result: dict[str, Any] = self._client().acquire_token_for_client(scopes=[scope])
        except ValueError as exc:  # MSAL's "cannot reach the authority" (tenant discovery failed)
            raise DeliveryFailed(f"Teams: cannot get the bot's token from Entra: {exc}") from exc
        token = result.get("access_token")
        if isinstance(token, str) and token:
            return token
        error = str(result.get("error") or "no access_token")
        description = str(result.get("error_description") or "").splitlines()[0:1]
        permanent = error in ("invalid_client", "unauthorized_client", "invalid_request")
        raise DeliveryFailed(
            f"Teams: Entra refused the bot's token request: {error} {' '.join(description)}".strip(),
            permanent=permanent,
        )

    async def get_app_token(self, scope: str, tenant_id: str | None = None) -> str:
        return await asyncio.to_thread(self._acquire, self._settings.bot_scope or scope)


# --- the channel ---------------------------------------------------------------------------------------


class TeamsChannel:
    """`teams:NAME` targets: post the card into the configured conversation, update it on each transition."""

    kind = "teams"

    def __init__(
        self,
        settings: TeamsSettings,
        *,
        secret: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.tokens = EntraAppTokenProvider(
            settings,
            secret if secret is not None else read_secret(settings.app_secret, "channels.teams.app_secret"),
        )
        self._timeout = timeout
        self._clients: dict[str, ApiClient] = {}
        self._cloud = with_overrides(
            PUBLIC,
            login_endpoint=settings.login_url.rstrip("/"),
            login_tenant=settings.tenant_id,
            bot_scope=settings.bot_scope,
            openid_metadata_url=settings.openid_metadata_url,
            token_issuer=settings.token_issuer,
        )

    def conversation(self, target: str) -> TeamsConversation:
        name = target.removeprefix("teams:")
        found = self.settings.conversations.get(name)
        if found is None:
            raise DeliveryFailed(
                f"{target}: no such conversation in channels.teams.conversations "
                f"(configured: {', '.join(sorted(self.settings.conversations)) or 'none'})",
                permanent=True,
            )
        return found

    def client(self, service_url: str) -> ApiClient:
        key = service_url.rstrip("/")
        if key not in self._clients:
            with warnings.catch_warnings():
                # ApiClient builds its deprecated BotClient for every caller; keyturn does not use it.
                warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*bot client")
                self._clients[key] = ApiClient(
                    key,
                    ClientOptions(timeout=self._timeout),
                    cloud=self._cloud,
                    token_provider=self.tokens,
                )
        return self._clients[key]

    async def post(self, delivery: Delivery) -> MessageRef | None:
        if delivery.kind in (DeliveryKind.EVENT, DeliveryKind.OUTCOME):
            # Teams has no direct message to a person the bot has never talked to; the card itself and
            # its refresh tell everyone in the conversation how the request ended.
            return None
        where = self.conversation(delivery.target)
        card = test_card(delivery.target) if delivery.kind is DeliveryKind.TEST else build_card(delivery.view)
        sent = await self._call(
            self.client(where.service_url).conversations.create_activity(
                where.conversation_id, card_activity(card)
            ),
            delivery.target,
        )
        if delivery.kind is DeliveryKind.TEST:
            return None
        return MessageRef(
            target=delivery.target,
            conversation=where.conversation_id,
            message_id=sent.id,
            extra={"service_url": where.service_url},
        )

    async def update(self, ref: MessageRef, delivery: Delivery) -> None:
        service_url = ref.extra.get("service_url") or self.conversation(ref.target).service_url
        await self.update_card(service_url, ref.conversation, ref.message_id, build_card(delivery.view))

    async def update_card(
        self, service_url: str, conversation_id: str, activity_id: str, card: AdaptiveCard
    ) -> None:
        await self._call(
            self.client(service_url).conversations.update_activity(
                conversation_id, activity_id, card_activity(card)
            ),
            f"teams conversation {conversation_id}",
        )

    async def _call(self, call: Any, what: str) -> Any:
        try:
            return await call
        except httpx.HTTPStatusError as exc:
            raise _failed(exc.response, what) from exc
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{what}: cannot reach the Bot Connector: {exc}") from exc

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.http.http.aclose()


def _failed(response: httpx.Response, what: str) -> DeliveryFailed:
    status = response.status_code
    detail = response.text[:200].replace("\n", " ")
    message = f"{what}: the Bot Connector answered {status}: {detail}"
    if status == 429 or status >= 500:
        return DeliveryFailed(message, retry_after=_retry_after(response.headers.get("retry-after")))
    # 401/403: the bot is not in that conversation or its credentials are wrong; 404: no such
    # conversation or activity. Retrying the same call cannot succeed.
    return DeliveryFailed(message, permanent=True)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(moment.tzinfo)).total_seconds())


def build_teams_channel(settings: TeamsSettings) -> TeamsChannel:
    """The configured Teams channel; `ConfigError` (one line) when its secret has no value."""
    return TeamsChannel(settings)
