"""A fake Slack Web API on loopback for the real `slack_sdk` client, and Slack's side of interactivity.

Slack itself cannot be reached from this machine, so this stands in for it and checks what it receives the
way Slack does: the bot token (`not_authed` / `invalid_auth`), the arguments of each method, and Block Kit
structure and limits (block types and their properties, text lengths, counts, unique action/block ids),
answering `invalid_blocks` with Slack-style `errors` pointers. It can be told to fail like Slack does when
it is down or rate limiting (HTTP 503, HTTP 429 with `Retry-After`).

    slack = FakeSlack(token="xoxb-test", users=[SlackUser("U1", "alice@example.com")]).start()
    slack.api_url                     # give this to keyturn as channels.slack.api_url
    slack.messages["C0OPS"]           # ts -> the message as last posted/updated
    slack.ephemerals, slack.views     # what people were shown
    slack.fail_next(429, retry_after=2, times=3)

Interactivity: `signed_headers(secret, body)` signs exactly as Slack does (v0 HMAC-SHA256 over
`v0:{timestamp}:{body}`, via slack_sdk's own `SignatureVerifier.generate_signature`); `click_payload` and
`submission_payload` build `block_actions` and `view_submission` payloads shaped like Slack's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from slack_sdk.signature import SignatureVerifier

TEAM = "T0KEYTURN"


@dataclass
class SlackUser:
    id: str
    email: str
    team_id: str = TEAM
    email_confirmed: bool = True
    is_bot: bool = False
    deleted: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "team_id": self.team_id,
            "name": self.email.split("@")[0],
            "deleted": self.deleted,
            "is_bot": self.is_bot,
            "is_email_confirmed": self.email_confirmed,
            "profile": {"email": self.email, "real_name": self.email.split("@")[0].title()},
        }


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    status: int
    answer: dict[str, Any]
    at: float = field(default_factory=time.perf_counter)  # answered (a post: stored), for benchmarks


# --- Block Kit validation (the subset keyturn uses, with Slack's documented limits) ------------------------

_TEXT_TYPES = {"plain_text", "mrkdwn"}
_BLOCK_KEYS = {
    "header": {"type", "block_id", "text"},
    "section": {"type", "block_id", "text", "fields", "accessory", "expand"},
    "actions": {"type", "block_id", "elements"},
    "context": {"type", "block_id", "elements"},
    "divider": {"type", "block_id"},
    "input": {"type", "block_id", "label", "element", "optional", "hint", "dispatch_action"},
}
_BUTTON_KEYS = {"type", "text", "action_id", "value", "url", "style", "confirm", "accessibility_label"}
_PLAIN_INPUT_KEYS = {
    "type",
    "action_id",
    "initial_value",
    "multiline",
    "min_length",
    "max_length",
    "placeholder",
    "dispatch_action_config",
    "focus_on_load",
}
_VIEW_KEYS = {
    "type",
    "title",
    "blocks",
    "close",
    "submit",
    "private_metadata",
    "callback_id",
    "clear_on_close",
    "notify_on_close",
    "external_id",
    "submit_disabled",
}


class _Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.action_ids: set[str] = set()
        self.block_ids: set[str] = set()

    def fail(self, message: str, pointer: str) -> None:
        self.errors.append(f"{message} [json-pointer:{pointer}]")

    def text(
        self, obj: Any, pointer: str, *, limit: int, plain_only: bool = False, required: bool = True
    ) -> None:
        if obj is None:
            if required:
                self.fail("missing required field: text", pointer)
            return
        if not isinstance(obj, dict):
            self.fail("must be an object", pointer)
            return
        kind = obj.get("type")
        allowed = {"plain_text"} if plain_only else _TEXT_TYPES
        if kind not in allowed:
            self.fail(f"must be one of {sorted(allowed)}", f"{pointer}/type")
        extra = set(obj) - {"type", "text", "emoji", "verbatim"}
        if extra:
            self.fail(f"invalid additional property: {sorted(extra)[0]}", pointer)
        text = obj.get("text")
        if not isinstance(text, str) or not text:
            self.fail("must be more than 0 characters", f"{pointer}/text")
        elif len(text) > limit:
            self.fail(f"must be less than {limit + 1} characters", f"{pointer}/text")

    def ident(self, value: Any, seen: set[str], pointer: str, what: str) -> None:
        if value is None:
            return
        if not isinstance(value, str) or not value or len(value) > 255:
            self.fail(f"{what} must be 1 to 255 characters", pointer)
        elif value in seen:
            self.fail(f"{what} {value!r} already exists", pointer)
        else:
            seen.add(value)

    def blocks(self, blocks: Any, *, surface: str) -> None:
        limit = 50 if surface == "message" else 100
        if not isinstance(blocks, list):
            self.fail("must be an array", "/blocks")
            return
        if len(blocks) > limit:
            self.fail(f"must have at most {limit} items", "/blocks")
        for i, block in enumerate(blocks):
            self.block(block, f"/blocks/{i}", surface)

    def block(self, block: Any, pointer: str, surface: str) -> None:
        if not isinstance(block, dict):
            self.fail("must be an object", pointer)
            return
        kind = block.get("type")
        if kind not in _BLOCK_KEYS or (kind == "input" and surface == "message"):
            self.fail(f"unsupported type: {kind}", f"{pointer}/type")
            return
        extra = set(block) - _BLOCK_KEYS[kind]
        if extra:
            self.fail(f"invalid additional property: {sorted(extra)[0]}", pointer)
        self.ident(block.get("block_id"), self.block_ids, f"{pointer}/block_id", "block_id")
        if kind == "header":
            self.text(block.get("text"), f"{pointer}/text", limit=150, plain_only=True)
        elif kind == "section":
            fields = block.get("fields")
            if block.get("text") is None and not fields:
                self.fail("must provide either text or fields", pointer)
            if block.get("text") is not None:
                self.text(block["text"], f"{pointer}/text", limit=3000)
            if fields is not None:
                if not isinstance(fields, list) or len(fields) > 10:
                    self.fail("must have at most 10 items", f"{pointer}/fields")
                else:
                    for j, item in enumerate(fields):
                        self.text(item, f"{pointer}/fields/{j}", limit=2000)
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                self.fail("must have 1 to 25 items", f"{pointer}/elements")
                return
            for j, element in enumerate(elements):
                self.button(element, f"{pointer}/elements/{j}")
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                self.fail("must have 1 to 10 items", f"{pointer}/elements")
                return
            for j, element in enumerate(elements):
                self.text(element, f"{pointer}/elements/{j}", limit=3000)
        elif kind == "input":
            self.text(block.get("label"), f"{pointer}/label", limit=2000, plain_only=True)
            element = block.get("element")
            if not isinstance(element, dict) or element.get("type") != "plain_text_input":
                self.fail("unsupported element type", f"{pointer}/element")
                return
            extra = set(element) - _PLAIN_INPUT_KEYS
            if extra:
                self.fail(f"invalid additional property: {sorted(extra)[0]}", f"{pointer}/element")
            self.ident(element.get("action_id"), set(), f"{pointer}/element/action_id", "action_id")
            max_length = element.get("max_length", 3000)
            if not isinstance(max_length, int) or not 1 <= max_length <= 3000:
                self.fail("max_length must be 1 to 3000", f"{pointer}/element/max_length")
            initial = element.get("initial_value")
            if initial is not None and (not isinstance(initial, str) or len(initial) > max_length):
                self.fail("initial_value too long", f"{pointer}/element/initial_value")

    def button(self, element: Any, pointer: str) -> None:
        if not isinstance(element, dict) or element.get("type") != "button":
            self.fail("unsupported element type", pointer)
            return
        extra = set(element) - _BUTTON_KEYS
        if extra:
            self.fail(f"invalid additional property: {sorted(extra)[0]}", pointer)
        self.text(element.get("text"), f"{pointer}/text", limit=75, plain_only=True)
        self.ident(element.get("action_id"), self.action_ids, f"{pointer}/action_id", "action_id")
        if "value" in element and (not isinstance(element["value"], str) or len(element["value"]) > 2000):
            self.fail("must be less than 2001 characters", f"{pointer}/value")
        if "url" in element and (not isinstance(element["url"], str) or len(element["url"]) > 3000):
            self.fail("must be less than 3001 characters", f"{pointer}/url")
        if "style" in element and element["style"] not in ("primary", "danger"):
            self.fail("must be one of primary, danger", f"{pointer}/style")

    def view(self, view: Any) -> None:
        if not isinstance(view, dict):
            self.fail("must be an object", "/view")
            return
        extra = set(view) - _VIEW_KEYS
        if extra:
            self.fail(f"invalid additional property: {sorted(extra)[0]}", "/view")
        if view.get("type") != "modal":
            self.fail("must be modal", "/view/type")
        self.text(view.get("title"), "/view/title", limit=24, plain_only=True)
        for key in ("submit", "close"):
            if key in view:
                self.text(view[key], f"/view/{key}", limit=24, plain_only=True)
        blocks = view.get("blocks")
        self.blocks(blocks, surface="modal")
        has_input = isinstance(blocks, list) and any(
            isinstance(b, dict) and b.get("type") == "input" for b in blocks
        )
        if has_input and "submit" not in view:
            self.fail("submit is required when a view has input blocks", "/view/submit")
        if len(str(view.get("private_metadata", ""))) > 3000:
            self.fail("must be less than 3001 characters", "/view/private_metadata")
        if len(str(view.get("callback_id", ""))) > 255:
            self.fail("must be less than 256 characters", "/view/callback_id")


def validate_blocks(blocks: Any, surface: str = "message") -> list[str]:
    checker = _Checker()
    checker.blocks(blocks, surface=surface)
    return checker.errors


def validate_view(view: Any) -> list[str]:
    checker = _Checker()
    checker.view(view)
    return checker.errors


# --- the server ------------------------------------------------------------------------------------------


class SlackError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


@dataclass
class FakeSlack:
    token: str = "xoxb-keyturn-test"
    users: list[SlackUser] = field(default_factory=list)
    channels: dict[str, str] = field(default_factory=lambda: {"#ops-approvals": "C0OPS0001"})
    trigger_ttl: float = 3.0  # Slack's trigger ids expire after 3 seconds
    app_token: str = "xapp-1-keyturn-test"  # the app-level token of Socket Mode (apps.connections.open)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: dict[str, dict[str, dict[str, Any]]] = {}  # channel id -> ts -> message
        self.ephemerals: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []
        self.calls: list[Call] = []
        self._failures: list[tuple[int, float | None]] = []
        self._triggers: dict[str, float] = {}
        self._ts = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.socket = SocketModeServer()

    # --- control ---------------------------------------------------------------------------------------

    def start(self) -> FakeSlack:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.socket.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def fail_next(self, status: int, *, retry_after: float | None = None, times: int = 1) -> None:
        """The next `times` calls answer HTTP `status` (503: down; 429: rate limited, with Retry-After)."""
        with self.lock:
            self._failures.extend([(status, retry_after)] * times)

    def new_trigger(self) -> str:
        """A trigger id as Slack puts in an interaction payload (valid for `trigger_ttl` seconds)."""
        trigger = f"{next(self._ts)}.{int(time.time())}.trigger"
        with self.lock:
            self._triggers[trigger] = time.monotonic()
        return trigger

    def channel_id(self, name: str) -> str:
        return self.channels.get(name, name)

    def calls_to(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def ok_calls(self, method: str) -> list[Call]:
        return [c for c in self.calls_to(method) if c.status == 200 and c.answer.get("ok")]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = predicate(self)
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError("the fake Slack did not see what was expected in time")

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        with self.lock:
            return self.messages[self.channel_id(channel)][ts]

    def all_messages(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        with self.lock:
            items = [(c, ts, m) for c, by_ts in self.messages.items() for ts, m in by_ts.items()]
        yield from items

    # --- HTTP ------------------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        split = urlsplit(request.path)
        method = split.path.removeprefix("/api/")
        args: dict[str, Any] = {k: v[0] for k, v in parse_qs(split.query).items()}
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            if raw and content_type == "application/json":
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise SlackError("invalid_json")
                args.update(body)
            elif raw:
                args.update({k: v[0] for k, v in parse_qs(raw.decode("utf-8")).items()})
        except (ValueError, SlackError):
            self._answer(request, method, args, 200, {"ok": False, "error": "invalid_json"})
            return
        with self.lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            status, retry_after = failure
            headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
            answer = {"ok": False, "error": "ratelimited" if status == 429 else "service_unavailable"}
            self._answer(request, method, args, status, answer, headers)
            return
        try:
            self._authorise(request, args, method)
            handler = getattr(self, "_m_" + method.replace(".", "_"), None)
            if handler is None:
                raise SlackError("unknown_method")
            with self.lock:
                result = handler(args)
            answer = {"ok": True, **result}
        except SlackError as exc:
            answer = {"ok": False, "error": exc.error, **exc.extra}
        self._answer(request, method, args, 200, answer)

    def _answer(
        self,
        request: BaseHTTPRequestHandler,
        method: str,
        args: dict[str, Any],
        status: int,
        answer: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        with self.lock:
            self.calls.append(Call(method, args, status, answer))
        data = json.dumps(answer).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(data)

    def _authorise(self, request: BaseHTTPRequestHandler, args: dict[str, Any], method: str) -> None:
        header = request.headers.get("Authorization") or ""
        token = (
            header.removeprefix("Bearer ").strip()
            if header.startswith("Bearer ")
            else args.pop("token", None)
        )
        if not token:
            raise SlackError("not_authed")
        # Slack keeps the token types apart: app-level tokens only open Socket Mode connections.
        expected = self.app_token if method == "apps.connections.open" else self.token
        if token in (self.token, self.app_token) and token != expected:
            raise SlackError("not_allowed_token_type")
        if token != expected:
            raise SlackError("invalid_auth")

    # --- methods (called with the lock held) ------------------------------------------------------------

    def _user(self, user_id: Any) -> SlackUser:
        for user in self.users:
            if user.id == user_id:
                return user
        raise SlackError("user_not_found")

    def _known_channel(self, channel: Any, *, by_id_only: bool = False) -> str:
        if not isinstance(channel, str) or not channel:
            raise SlackError("channel_not_found")
        if channel in self.channels.values() or channel in self.messages:
            return channel
        if not by_id_only and channel in self.channels:
            return self.channels[channel]
        raise SlackError("channel_not_found")

    def _content(self, args: dict[str, Any]) -> dict[str, Any]:
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except ValueError:
                raise SlackError("invalid_blocks_format") from None
        text = args.get("text")
        if blocks is None and not text:
            raise SlackError("no_text")
        if text is not None and len(str(text)) > 40000:
            raise SlackError("msg_too_long")
        if blocks is not None:
            errors = validate_blocks(blocks, "message")
            if errors:
                raise SlackError("invalid_blocks", errors=errors)
        return {"text": text or "", "blocks": blocks or []}

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._known_channel(args.get("channel"))
        message = self._content(args)
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        message.update(ts=ts, type="message", bot_id="B0KEYTURN")
        self.messages.setdefault(channel, {})[ts] = message
        return {"channel": channel, "ts": ts, "message": message}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._known_channel(args.get("channel"), by_id_only=True)
        ts = args.get("ts")
        if ts not in self.messages.get(channel, {}):
            raise SlackError("message_not_found")
        message = self._content(args)
        message.update(ts=ts, type="message", bot_id="B0KEYTURN", edited=True)
        self.messages[channel][ts] = message
        return {"channel": channel, "ts": ts, "text": message["text"]}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._known_channel(args.get("channel"))
        user = self._user(args.get("user"))
        message = self._content(args)
        message.update(channel=channel, user=user.id)
        self.ephemerals.append(message)
        return {"message_ts": f"{int(time.time())}.{next(self._ts):06d}"}

    def _m_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        trigger = args.get("trigger_id")
        issued = self._triggers.pop(str(trigger), None) if trigger else None
        if issued is None:
            raise SlackError("invalid_trigger_id")
        if time.monotonic() - issued > self.trigger_ttl:
            raise SlackError("expired_trigger_id")
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        errors = validate_view(view)
        if errors:
            raise SlackError("invalid_arguments", response_metadata={"messages": errors})
        stored = {**view, "id": f"V{next(self._ts):08d}", "trigger_id": trigger}
        self.views.append(stored)
        return {"view": stored}

    def _m_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"user": self._user(args.get("user")).as_json()}

    def _m_users_lookupByEmail(self, args: dict[str, Any]) -> dict[str, Any]:
        email = str(args.get("email") or "").casefold()
        for user in self.users:
            if user.email.casefold() == email and not user.deleted:
                return {"user": user.as_json()}
        raise SlackError("users_not_found")

    def _m_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": self.socket.start()}

    def _m_conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        users = [u for u in str(args.get("users") or "").split(",") if u]
        if len(users) != 1:
            raise SlackError("not_enough_users" if not users else "too_many_users")
        user = self._user(users[0])
        channel = "D" + user.id
        self.messages.setdefault(channel, {})
        return {"channel": {"id": channel}}


# --- interactivity: Slack's side -------------------------------------------------------------------------


def signed_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack sends with an interactivity request, signed with slack_sdk's own scheme."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    assert signature is not None
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def form_body(payload: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def click_payload(
    *,
    user: str,
    action_id: str,
    request_id: str,
    channel: str,
    message_ts: str,
    trigger_id: str,
    team: str = TEAM,
) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": team, "domain": "keyturn-test"},
        "user": {"id": user, "username": user.lower(), "team_id": team},
        "api_app_id": "A0KEYTURN",
        "token": "legacy-verification-token",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": trigger_id,
        "channel": {"id": channel, "name": "ops-approvals"},
        "message": {"ts": message_ts, "type": "message"},
        "response_url": "https://hooks.slack.invalid/actions/T0/1/x",
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "keyturn_actions",
                "value": request_id,
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def submission_payload(
    *, user: str, view: dict[str, Any], values: dict[str, str], team: str = TEAM
) -> dict[str, Any]:
    """A view_submission of an opened modal; `values` maps block_id -> the text typed in its input."""
    state: dict[str, dict[str, Any]] = {}
    for block in view.get("blocks", []):
        if block.get("type") != "input":
            continue
        element = block["element"]
        typed = values.get(block["block_id"], element.get("initial_value"))
        state[block["block_id"]] = {element["action_id"]: {"type": "plain_text_input", "value": typed}}
    for block_id, typed in values.items():  # inputs the modal did not have (a forged submission)
        state.setdefault(block_id, {"value": {"type": "plain_text_input", "value": typed}})
    return {
        "type": "view_submission",
        "team": {"id": team, "domain": "keyturn-test"},
        "user": {"id": user, "username": user.lower(), "team_id": team},
        "api_app_id": "A0KEYTURN",
        "trigger_id": f"{time.time_ns()}.submit",  # unique per submission, as Slack's are,
        "view": {
            "id": view.get("id", "V0"),
            "team_id": team,
            "type": "modal",
            "callback_id": view.get("callback_id"),
            "private_metadata": view.get("private_metadata", ""),
            "blocks": view.get("blocks", []),
            "state": {"values": state},
            "hash": "1.abc",
        },
    }


class SocketModeServer:
    """Slack's Socket Mode end: a WebSocket server (the `websockets` library) on loopback that says hello,
    pushes envelopes to the connected app and collects the app's acknowledgements."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        self._connections: list[Any] = []
        self.acks: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def start(self) -> str:
        with self._lock:
            if self._url is not None:
                return self._url
            ready = threading.Event()
            self._loop = asyncio.new_event_loop()

            async def handler(connection: Any) -> None:
                self._connections.append(connection)
                await connection.send(json.dumps({"type": "hello", "num_connections": 1, "debug_info": {}}))
                async for raw in connection:
                    message = json.loads(raw)
                    if "envelope_id" in message:
                        self.acks[message["envelope_id"]] = message

            async def main() -> None:
                from websockets.asyncio.server import serve

                async with serve(handler, "127.0.0.1", 0) as server:
                    port = next(iter(server.sockets)).getsockname()[1]
                    self._url = f"ws://127.0.0.1:{port}/link/?ticket=keyturn-test"
                    self._stopped = asyncio.Event()
                    ready.set()
                    await self._stopped.wait()

            self._thread = threading.Thread(target=self._loop.run_until_complete, args=(main(),), daemon=True)
            self._thread.start()
            ready.wait(10)
            assert self._url is not None
            return self._url

    def connected(self) -> bool:
        return bool(self._connections)

    def push(
        self, payload: dict[str, Any], *, envelope_id: str | None = None, timeout: float = 15.0
    ) -> dict[str, Any]:
        """Deliver one `interactive` envelope to the app and wait for its acknowledgement."""
        assert self._loop is not None and self._connections, "no Socket Mode connection"
        envelope_id = envelope_id or f"env-{time.monotonic_ns()}"
        envelope = {
            "envelope_id": envelope_id,
            "type": "interactive",
            "payload": payload,
            "accepts_response_payload": True,
            "retry_attempt": 0,
            "retry_reason": "",
        }
        self.acks.pop(envelope_id, None)
        connection = self._connections[-1]
        asyncio.run_coroutine_threadsafe(connection.send(json.dumps(envelope)), self._loop).result(5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if envelope_id in self.acks:
                return self.acks[envelope_id]
            time.sleep(0.02)
        raise AssertionError(f"envelope {envelope_id} was not acknowledged")

    def stop(self) -> None:
        if self._loop is not None and self._url is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            if self._thread is not None:
                self._thread.join(5)
