"""Slack: the approval card (Block Kit), its updates, the review modals and the on-behalf-of DM.

Transport only (see `base.Channel`): everything shown is built from the one redacted view of the request
(`keyturn.views.request_view`), so no secret reaches Slack (guarantee 9), and nothing here decides; clicks
come back through `keyturn.channels.slack_http`, which hands them to the service's one review path.

Targets look like `slack:#ops-approvals` or `slack:C0123ABCD`. Posting answers the channel's id and the
message `ts`; both are the `MessageRef` later updates use (`chat.update` needs the id, not the name).
The Web API base URL comes from the settings, so tests point the real `slack_sdk` client at a fake.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from keyturn.channels.base import Delivery, DeliveryFailed, DeliveryKind, MessageRef
from keyturn.config import ConfigError, Settings, SlackSettings, read_secret

if TYPE_CHECKING:
    from keyturn.store.chat import ChatAccounts
    from keyturn.store.store import Store

log = logging.getLogger("keyturn.channels.slack")

PROVIDER = "slack"
APPROVE = "keyturn_approve"
DENY = "keyturn_deny"
OPEN_CONSOLE = "keyturn_open"  # a URL button: Slack still reports the click, which is acknowledged only
APPROVE_VIEW = "keyturn_approve_modal"
DENY_VIEW = "keyturn_deny_modal"
COMMENT_BLOCK = "keyturn_comment"
COMMENT_INPUT = "comment"
PARAM_BLOCK_PREFIX = "keyturn_param:"  # + the editable path, e.g. "keyturn_param:params.rows"
PARAM_INPUT = "value"

# Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks): text beyond them is refused with
# invalid_blocks, so every piece of a request's text is clipped to fit.
SECTION_TEXT_MAX = 3000
FIELD_TEXT_MAX = 2000
HEADER_TEXT_MAX = 150
MODAL_TITLE_MAX = 24
INPUT_MAX = 3000

# Slack errors that retrying cannot fix: the dispatcher should stop and say so.
_PERMANENT = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_blocks",
        "invalid_arguments",
        "msg_too_long",
        "message_not_found",
        "cant_update_message",
        "user_not_found",
        "users_not_found",
    }
)

_STATUS_TITLE = {
    "pending": "Approval needed",
    "approved": "Approved",
    "denied": "Denied",
    "expired": "Expired",
    "cancelled": "Cancelled",
    "executing": "Approved, running",
    "succeeded": "Approved, ran successfully",
    "failed": "Approved, run failed",
    "allowed": "Allowed by policy",
}
_STATUS_ICON = {
    "pending": ":hourglass_flowing_sand:",
    "approved": ":white_check_mark:",
    "executing": ":white_check_mark:",
    "succeeded": ":white_check_mark:",
    "failed": ":warning:",
    "denied": ":no_entry:",
    "expired": ":alarm_clock:",
    "cancelled": ":heavy_multiplication_x:",
}


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: a requester's text must not ping `<!channel>` or hide a link behind words."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _code(value: Any, limit: int) -> str:
    body = escape(_json(value))
    fence = "```"
    room = limit - 2 * len(fence) - 2
    return f"{fence}\n{clip(body, room)}\n{fence}"


def _when(iso: str | None) -> str:
    if not iso:
        return "never"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return escape(iso)
    # Slack renders the date in each reader's own time zone; the fallback is the ISO text.
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{escape(iso)}>"


def _who(principal_id: str | None) -> str:
    return escape(principal_id) if principal_id else "—"


def _target_conversation(target: str) -> str:
    """`slack:#ops-approvals` -> `#ops-approvals`; `slack:C0123` -> `C0123`."""
    name = target.split(":", 1)[1] if target.startswith(f"{PROVIDER}:") else target
    if not name:
        raise DeliveryFailed(f"{target}: no Slack channel named", permanent=True)
    return name


# --- the card -------------------------------------------------------------------------------------------


def card_text(view: dict[str, Any]) -> str:
    """The plain-text fallback (notifications, screen readers)."""
    status = str(view.get("status", ""))
    title = _STATUS_TITLE.get(status, status)
    return clip(
        f"{title}: {view.get('action', '')} on {view.get('resource') or '—'} "
        f"requested by {view.get('requester', {}).get('id', '?')}",
        3000,
    )


def outcome_summary(view: dict[str, Any]) -> str:
    """Who decided and how: "approved by alice, sam", "denied by carol: too many rows", "expired"."""
    status = str(view.get("status", ""))
    reviews = view.get("reviews") or []
    approvers = [r["reviewer"] for r in reviews if r.get("decision") == "approve"]
    deniers = [r for r in reviews if r.get("decision") == "deny"]
    if status == "denied" and deniers:
        last = deniers[-1]
        return f"denied by {last['reviewer']}: {last.get('comment', '')}"
    if status in ("approved", "executing", "succeeded", "failed") and approvers:
        return f"{status} (approved by {', '.join(approvers)})"
    if status == "pending" and approvers:
        return f"pending (approved so far by {', '.join(approvers)})"
    return status


def card_blocks(view: dict[str, Any]) -> list[dict[str, Any]]:
    status = str(view.get("status", ""))
    verdict = view.get("verdict") or {}
    pending = status == "pending"
    title = f"{_STATUS_TITLE.get(status, status)}: {view.get('action', '')}"
    fields = [
        f"*Requester*\n{_who(view.get('requester', {}).get('id'))}",
        f"*On behalf of*\n{_who(view.get('on_behalf_of'))}",
        f"*Action*\n`{escape(str(view.get('action', '')))}`",
        f"*Resource*\n{escape(str(view.get('resource') or '—'))}",
        f"*Tier*\n{escape(str(verdict.get('tier') or '—'))}"
        + ("  (step-up)" if verdict.get("step_up") else ""),
        f"*Expires*\n{_when(view.get('expires_at'))}" if pending else f"*Status*\n{escape(status)}",
    ]
    if pending:
        needed = ", ".join(view.get("still_needed") or []) or "nothing"
        fields.append(f"*Still needed*\n{escape(needed)}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(title, HEADER_TEXT_MAX)}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": clip(f, FIELD_TEXT_MAX)} for f in fields],
        },
    ]
    justification = str(view.get("justification") or "")
    if justification:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": clip(f"*Justification*\n{escape(justification)}", SECTION_TEXT_MAX),
                },
            }
        )
    blocks.append(
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "*Params*\n" + _code(view.get("params"), 2900)},
        }
    )
    approved = view.get("approved_params")
    if approved is not None and approved != view.get("params"):
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*Approved params*\n" + _code(approved, 2900)},
            }
        )
    decisions = [
        f"{'approved' if r.get('decision') == 'approve' else 'denied'} by {r.get('reviewer')}"
        + (" (edited)" if r.get("edited") else "")
        + (f": {r.get('comment')}" if r.get("comment") else "")
        for r in view.get("reviews") or []
    ]
    status_line = f"{_STATUS_ICON.get(status, '')} *{escape(outcome_summary(view))}*".strip()
    if decisions:
        status_line += "\n" + "\n".join(f"• {escape(d)}" for d in decisions[-10:])
    blocks.append(
        {"type": "section", "text": {"type": "mrkdwn", "text": clip(status_line, SECTION_TEXT_MAX)}}
    )
    request_id = str(view.get("id", ""))
    if pending:
        if verdict.get("step_up"):
            # Guarantee 10: a step-up route counts only fresh logins or passkeys, which a click cannot give.
            approve: dict[str, Any] = {
                "type": "button",
                "action_id": OPEN_CONSOLE,
                "text": {"type": "plain_text", "text": "Approve in keyturn"},
                "url": str(view.get("review_url", "")),
                "style": "primary",
            }
        else:
            approve = {
                "type": "button",
                "action_id": APPROVE,
                "text": {"type": "plain_text", "text": "Approve…"},
                "value": request_id,
                "style": "primary",
            }
        deny = {
            "type": "button",
            "action_id": DENY,
            "text": {"type": "plain_text", "text": "Deny…"},
            "value": request_id,
            "style": "danger",
        }
        blocks.append({"type": "actions", "block_id": "keyturn_actions", "elements": [approve, deny]})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": clip(
                        f"keyturn request `{escape(request_id)}` · <{view.get('review_url', '')}|details>",
                        2000,
                    ),
                }
            ],
        }
    )
    return blocks


# --- the modals -----------------------------------------------------------------------------------------


def _text_input(
    block_id: str, label: str, *, initial: str = "", optional: bool, multiline: bool
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": PARAM_INPUT if block_id.startswith(PARAM_BLOCK_PREFIX) else COMMENT_INPUT,
        "multiline": multiline,
        "max_length": INPUT_MAX,
    }
    if initial:
        element["initial_value"] = clip(initial, INPUT_MAX)
    return {
        "type": "input",
        "block_id": block_id,
        "optional": optional,
        "label": {"type": "plain_text", "text": clip(label, 2000)},
        "element": element,
    }


def _summary_block(view: dict[str, Any]) -> dict[str, Any]:
    text = (
        f"*{escape(str(view.get('action', '')))}* on {escape(str(view.get('resource') or '—'))}\n"
        f"requested by {_who(view.get('requester', {}).get('id'))}"
        + (f" for {_who(view.get('on_behalf_of'))}" if view.get("on_behalf_of") else "")
    )
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, SECTION_TEXT_MAX)}}


def approve_modal(view: dict[str, Any], current: dict[str, Any], metadata: str) -> dict[str, Any]:
    """Approve: an optional comment and one input per editable param (JSON values, current value shown).

    `current` is the redacted view of the params that would run now (after any earlier edit)."""
    blocks = [_summary_block(view)]
    for path in (view.get("verdict") or {}).get("editable") or []:
        value = lookup(current, path)
        blocks.append(
            _text_input(
                PARAM_BLOCK_PREFIX + path,
                f"{path} (JSON; leave as is to keep)",
                initial="" if value is _MISSING else json.dumps(value, ensure_ascii=False),
                optional=True,
                multiline=False,
            )
        )
    blocks.append(_text_input(COMMENT_BLOCK, "Comment (optional)", optional=True, multiline=True))
    return {
        "type": "modal",
        "callback_id": APPROVE_VIEW,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": "Approve request"},
        "submit": {"type": "plain_text", "text": "Approve"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": blocks,
    }


def deny_modal(view: dict[str, Any], metadata: str) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": DENY_VIEW,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": "Deny request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _summary_block(view),
            _text_input(COMMENT_BLOCK, "Reason (required)", optional=False, multiline=True),
        ],
    }


class _Missing:
    pass


_MISSING: Any = _Missing()


def lookup(document: dict[str, Any], path: str) -> Any:
    """The value at a route path like `params.rows` inside a params object (`_MISSING` if absent)."""
    parts = path.split(".")
    if parts and parts[0] == "params":
        parts = parts[1:]
    value: Any = document
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def outcome_text(view: dict[str, Any]) -> str:
    action = escape(str(view.get("action", "")))
    resource = escape(str(view.get("resource") or "—"))
    requester = _who(view.get("requester", {}).get("id"))
    return clip(
        f"{_STATUS_ICON.get(str(view.get('status')), '')} The request {requester} made for you, "
        f"`{action}` on {resource}, is {escape(outcome_summary(view))}. "
        f"<{view.get('review_url', '')}|details>",
        SECTION_TEXT_MAX,
    )


# --- the channel ----------------------------------------------------------------------------------------


class SlackChannel:
    kind = "slack"

    def __init__(
        self,
        settings: SlackSettings,
        token: str,
        *,
        accounts: ChatAccounts | None = None,
        timeout: int = 10,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        # No shared aiohttp session: the client may be used from several event loops (the server's and a
        # dispatcher's), and a session is bound to the loop that made it. slack_sdk opens one per call.
        self.client = AsyncWebClient(token=token, base_url=settings.api_url, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings, store: Store | None = None) -> SlackChannel:
        slack = settings.channels.slack
        if slack is None:
            raise ConfigError("channels.slack is not configured")
        from keyturn.store.chat import ChatAccounts

        token = read_secret(slack.bot_token, "channels.slack.bot_token")
        return cls(slack, token, accounts=ChatAccounts(store) if store is not None else None)

    async def post(self, delivery: Delivery) -> MessageRef | None:
        if delivery.kind is DeliveryKind.OUTCOME:
            await self.notify_outcome(delivery.view)
            return None
        if delivery.kind is DeliveryKind.EVENT:
            return None  # event streams are for webhooks; Slack shows the card and its updates
        conversation = _target_conversation(delivery.target)
        if delivery.kind is DeliveryKind.TEST:
            text = "keyturn test message: this channel receives approval requests."
            answer = await self._call(lambda: self.client.chat_postMessage(channel=conversation, text=text))
        else:
            answer = await self._call(
                lambda: self.client.chat_postMessage(
                    channel=conversation,
                    text=card_text(delivery.view),
                    blocks=card_blocks(delivery.view),
                    unfurl_links=False,
                    unfurl_media=False,
                )
            )
        return MessageRef(
            target=delivery.target, conversation=str(answer["channel"]), message_id=str(answer["ts"])
        )

    async def update(self, ref: MessageRef, delivery: Delivery) -> None:
        if delivery.kind is DeliveryKind.OUTCOME:
            await self.notify_outcome(delivery.view)
            return
        await self.update_card(ref.conversation, ref.message_id, delivery.view)

    async def update_card(self, conversation: str, ts: str, view: dict[str, Any]) -> None:
        await self._call(
            lambda: self.client.chat_update(
                channel=conversation, ts=ts, text=card_text(view), blocks=card_blocks(view)
            )
        )

    async def aclose(self) -> None:
        return None  # no session is held (see __init__)

    # --- interactive helpers (used by slack_http) ---------------------------------------------------------

    async def ephemeral(self, conversation: str, user: str, text: str) -> None:
        await self._call(
            lambda: self.client.chat_postEphemeral(channel=conversation, user=user, text=clip(text, 3000))
        )

    async def open_modal(self, trigger_id: str, modal: dict[str, Any]) -> None:
        await self._call(lambda: self.client.views_open(trigger_id=trigger_id, view=modal))

    async def verified_email(self, user: str, team: str) -> str | None:
        """The Slack user's e-mail when Slack says it is confirmed and the account is a live human of
        `team`; cross-checked with users.lookupByEmail (the address must lead back to the same user)."""
        info = await self._call(lambda: self.client.users_info(user=user))
        member = info.get("user") or {}
        email = (member.get("profile") or {}).get("email")
        if (
            not isinstance(email, str)
            or not email
            or member.get("is_email_confirmed") is not True
            or member.get("deleted")
            or member.get("is_bot")
            or member.get("team_id") != team
        ):
            return None
        found = await self._call(lambda: self.client.users_lookupByEmail(email=email))
        if (found.get("user") or {}).get("id") != user:
            return None
        return email.casefold()

    async def notify_outcome(self, view: dict[str, Any]) -> None:
        """Tell the on-behalf-of human how the request ended, by DM, when their Slack account is known."""
        human = view.get("on_behalf_of")
        if not human or self.accounts is None:
            return
        links = await asyncio.to_thread(self.accounts.links_of, str(human), PROVIDER)
        users = [link.user_id for link in links if link.method == "code" or self.settings.link_by_email]
        if not users and self.settings.link_by_email and str(human).startswith("user:"):
            email = str(human).removeprefix("user:")
            try:
                found = await self._call(lambda: self.client.users_lookupByEmail(email=email))
            except DeliveryFailed as exc:
                if not exc.permanent:
                    raise
                found = {}
            member = found.get("user") or {}
            if member.get("id") and member.get("is_email_confirmed") is True:
                users = [str(member["id"])]
        for user in users:
            opened = await self._call(lambda u=user: self.client.conversations_open(users=u))  # type: ignore[misc]
            conversation = (opened.get("channel") or {}).get("id")
            if not conversation:
                raise DeliveryFailed("conversations.open answered without a channel id")
            await self._call(
                lambda c=conversation: self.client.chat_postMessage(  # type: ignore[misc]
                    channel=c, text=outcome_text(view), unfurl_links=False
                )
            )

    async def _call(self, call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        """One Web API call; Slack's answers become `DeliveryFailed` the dispatcher understands."""
        try:
            response = await call()
        except SlackApiError as exc:
            status = exc.response.status_code
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            error = str(data.get("error") or f"HTTP {status}")
            retry_after: float | None = None
            header = (exc.response.headers or {}).get("Retry-After") or (exc.response.headers or {}).get(
                "retry-after"
            )
            if header is not None:
                try:
                    retry_after = float(header)
                except ValueError:
                    retry_after = None
            permanent = error in _PERMANENT or (400 <= status < 500 and status not in (408, 429))
            raise DeliveryFailed(f"Slack: {error}", retry_after=retry_after, permanent=permanent) from exc
        except (TimeoutError, SlackClientError, aiohttp.ClientError) as exc:
            raise DeliveryFailed(f"Slack unreachable: {exc or type(exc).__name__}") from exc
        data = response.data
        return data if isinstance(data, dict) else {}
