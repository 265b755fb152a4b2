"""A real `keyturn serve` wired to the fake Slack, with Slack people linked the way real people link.

    world = SlackWorld.start(tmp_path, database_url)   # fake Slack + server (channels.slack -> the fake)
    channel, ts = world.post_card(request_id)           # what the dispatcher does on submit
    world.click(ALICE_U, APPROVE, request_id, channel, ts)
    world.submit_modal(ALICE_U, request_id, {"keyturn_param:params.rows": "100"})

Slack users (team T0KEYTURN): U0ALICE, U0BOB, U0SAM, U0CAROL, U0OLIVIA are the keyturn users of
support/live.py; U0MALLORY has no keyturn identity at all; U0BOT is linked (by a direct database write:
the API refuses it) to an agent principal. `link_everyone()` links the humans through the real flow:
an unlinked click answers with a one-time code, which the person redeems with their own token.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import fresh_postgres_schema
from keyturn.channels.base import Delivery, DeliveryKind, MessageRef
from keyturn.channels.slack import APPROVE, SlackChannel
from keyturn.config import SecretSettings, SlackSettings
from keyturn.store import Store
from keyturn.store.chat import ChatAccounts, ChatLink
from support.fake_slack import (
    TEAM,
    FakeSlack,
    SlackUser,
    click_payload,
    form_body,
    signed_headers,
    submission_payload,
)
from support.live import DEFAULT_POLICY, LiveServer, start_server

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TOKEN = "xoxb-1234-5678-keyturntest"
INTERACTIVITY = "/v1/channels/slack/interactivity"

PEOPLE = {
    "U0ALICE": "user:alice@example.com",
    "U0BOB": "user:bob@example.com",
    "U0SAM": "user:sam@example.com",
    "U0CAROL": "user:carol@example.com",
    "U0OLIVIA": "user:olivia@example.com",
}
MALLORY = "U0MALLORY"
NEWBIE = "U0NEWBIE"  # a Slack user who never linked
BOT = "U0BOT"

POLICY = (
    DEFAULT_POLICY
    + """\
  - name: role changes need a fresh login
    match: {action: iam.role.attach}
    decision: review
    quorum: 1
    approvers: [sre]
    step_up: true
  - name: releases are reviewed in Slack
    match: {action: release.publish}
    decision: review
    quorum: 1
    approvers: [sre]
    editable: [params.percent]
    redact: [params.api_token]
    notify: ["slack:#ops-approvals"]
"""
)

CODE = re.compile(r"keyturn chat link (ktl_[A-Za-z0-9_-]+)")


def slack_users() -> list[SlackUser]:
    users = [SlackUser(uid, pid.removeprefix("user:")) for uid, pid in PEOPLE.items()]
    users.append(SlackUser(MALLORY, "mallory@example.com"))
    users.append(SlackUser(NEWBIE, "newbie@example.com"))
    users.append(SlackUser(BOT, "deploy-bot@example.com"))
    return users


@dataclass
class SlackWorld:
    server: LiveServer
    fake: FakeSlack
    database_url: str

    @classmethod
    def start(
        cls,
        workdir: Path,
        database_url: str | None = None,
        *,
        link_by_email: bool = False,
        users: list[SlackUser] | None = None,
        socket_mode: bool = False,
    ) -> SlackWorld:
        fake = FakeSlack(token=TOKEN, users=users if users is not None else slack_users()).start()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "slack-token").write_text(TOKEN + "\n")
        (workdir / "slack-secret").write_text(SECRET + "\n")
        slack = {
            "bot_token": {"file": str(workdir / "slack-token")},
            "signing_secret": {"file": str(workdir / "slack-secret")},
            "api_url": fake.api_url,
            "link_by_email": link_by_email,
        }
        if socket_mode:
            (workdir / "slack-app-token").write_text(fake.app_token + "\n")
            slack["app_token"] = {"file": str(workdir / "slack-app-token")}
        try:
            server = start_server(
                workdir, database_url=database_url, policy=POLICY, settings={"channels": {"slack": slack}}
            )
        except BaseException:
            fake.stop()
            raise
        return cls(server=server, fake=fake, database_url=server.database_url)

    def stop(self) -> None:
        self.server.stop()
        self.fake.stop()

    # --- the outbound side, as the dispatcher drives it -------------------------------------------------

    def channel(self, *, with_accounts: Store | None = None, link_by_email: bool = False) -> SlackChannel:
        settings = SlackSettings(
            bot_token=SecretSettings(env="UNUSED"),
            signing_secret=SecretSettings(env="UNUSED"),
            api_url=self.fake.api_url,
            link_by_email=link_by_email,
        )
        return SlackChannel(settings, TOKEN, accounts=ChatAccounts(with_accounts) if with_accounts else None)

    def view(self, request_id: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.server.url}/v1/actions/{request_id}", headers=self.server.headers("user:erin@example.com")
        )
        response.raise_for_status()
        view: dict[str, Any] = response.json()
        return view

    def post_card(self, request_id: str, target: str = "slack:#ops-approvals") -> tuple[str, str]:
        delivery = Delivery(
            id=f"test-{request_id}",
            kind=DeliveryKind.POST,
            target=target,
            event_type="request.pending",
            view=self.view(request_id),
        )
        ref = asyncio.run(self.channel().post(delivery))
        assert isinstance(ref, MessageRef)
        return ref.conversation, ref.message_id

    def posted_card(self, request_id: str, timeout: float = 30.0) -> tuple[str, str, dict[str, Any]]:
        """(channel id, ts, message) of the card the server's own outbox posted for the request."""

        def found(fake: FakeSlack) -> tuple[str, str, dict[str, Any]] | None:
            for call in fake.calls:  # under the fake's lock (wait_for holds it)
                if (
                    call.method == "chat.postMessage"
                    and call.answer.get("ok")
                    and request_id in str(call.args)
                ):
                    channel, ts = call.answer["channel"], call.answer["ts"]
                    return channel, ts, fake.messages[channel][ts]
            return None

        posted: tuple[str, str, dict[str, Any]] = self.fake.wait_for(found, timeout)
        return posted

    def submit(self, who: str = "agent:deploy-bot", **body: Any) -> dict[str, Any]:
        body.setdefault("action", "db.export")
        body.setdefault("resource", "postgres://prod/customers")
        body.setdefault("params", {"rows": 5000})
        response = httpx.post(f"{self.server.url}/v1/actions", json=body, headers=self.server.headers(who))
        assert response.status_code == 201, response.text
        answer: dict[str, Any] = response.json()
        return answer

    # --- the inbound side, as Slack sends it -------------------------------------------------------------

    def send(
        self, payload: dict[str, Any], *, timestamp: int | None = None, secret: str = SECRET
    ) -> httpx.Response:
        body = form_body(payload)
        return self.send_raw(body, signed_headers(secret, body, timestamp))

    def send_raw(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.server.url}{INTERACTIVITY}", content=body, headers=headers, timeout=30)

    def click(self, user: str, action_id: str, request_id: str, channel: str, ts: str) -> httpx.Response:
        payload = click_payload(
            user=user,
            action_id=action_id,
            request_id=request_id,
            channel=channel,
            message_ts=ts,
            trigger_id=self.fake.new_trigger(),
        )
        return self.send(payload)

    def opened_modal(self, request_id: str, before: int = 0) -> dict[str, Any] | None:
        with self.fake.lock:
            views = list(self.fake.views[before:])
        for view in reversed(views):
            if f'"r": "{request_id}"' in view.get("private_metadata", ""):
                return view
        return None

    def open_modal(self, user: str, action_id: str, request_id: str, channel: str, ts: str) -> dict[str, Any]:
        before = len(self.fake.views)
        response = self.click(user, action_id, request_id, channel, ts)
        assert response.status_code == 200, response.text
        modal = self.opened_modal(request_id, before)
        assert modal is not None, f"no modal opened; ephemerals: {self.fake.ephemerals[-3:]}"
        return modal

    def submit_modal(self, user: str, modal: dict[str, Any], values: dict[str, str]) -> httpx.Response:
        return self.send(submission_payload(user=user, view=modal, values=values))

    def ephemerals_for(self, user: str) -> list[str]:
        with self.fake.lock:
            return [str(e["text"]) for e in self.fake.ephemerals if e["user"] == user]

    def wait_ephemeral(self, user: str, count_before: int, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            said = self.ephemerals_for(user)
            if len(said) > count_before:
                return said[-1]
            time.sleep(0.02)
        raise AssertionError(f"no ephemeral message for {user}")

    def wait_card(self, channel: str, ts: str, needle: str, timeout: float = 10.0) -> dict[str, Any]:
        def found(fake: FakeSlack) -> dict[str, Any] | None:
            message = fake.messages.get(channel, {}).get(ts)
            return message if message is not None and needle in str(message) else None

        result: dict[str, Any] = self.fake.wait_for(found, timeout)
        return result

    # --- links -------------------------------------------------------------------------------------------

    def link_code(self, user: str, request_id: str, channel: str, ts: str) -> str:
        said = len(self.ephemerals_for(user))
        response = self.click(user, APPROVE, request_id, channel, ts)
        assert response.status_code == 200, response.text
        match = CODE.search(self.wait_ephemeral(user, said))
        assert match, self.ephemerals_for(user)[-1]
        return match.group(1)

    def redeem(self, who: str, code: str) -> httpx.Response:
        return httpx.post(
            f"{self.server.url}/v1/chat/links", json={"code": code}, headers=self.server.headers(who)
        )

    def link_everyone(self) -> None:
        """Every Slack person of PEOPLE linked through the real flow; U0BOT linked to the agent directly."""
        request = self.submit(justification="linking")
        channel, ts = self.post_card(request["id"])
        for user, principal in PEOPLE.items():
            response = self.redeem(principal, self.link_code(user, request["id"], channel, ts))
            assert response.status_code == 200, response.text
        store = Store.open(self.database_url)
        try:
            ChatAccounts(store).save_link(
                ChatLink("slack", TEAM, BOT, "agent:deploy-bot", "code", datetime.now(UTC))
            )
        finally:
            store.close()


class Worlds:
    """One linked `SlackWorld` per backend, started on first use and shared by a test module's tests."""

    def __init__(self, tmp: pytest.TempPathFactory, prefix: str) -> None:
        self.tmp = tmp
        self.prefix = prefix
        self.started: dict[str, SlackWorld] = {}
        self.schemas = ExitStack()

    @classmethod
    @contextmanager
    def opened(cls, tmp: pytest.TempPathFactory, prefix: str) -> Iterator[Worlds]:
        worlds = cls(tmp, prefix)
        try:
            yield worlds
        finally:
            worlds.close()

    def get(self, backend: str) -> SlackWorld:
        if backend not in self.started:
            url = self.schemas.enter_context(fresh_postgres_schema()) if backend == "postgresql" else None
            world = SlackWorld.start(self.tmp.mktemp(f"{self.prefix}-{backend}"), url)
            self.started[backend] = world
            world.link_everyone()
        return self.started[backend]

    def close(self) -> None:
        for world in self.started.values():
            world.stop()
        self.schemas.close()
