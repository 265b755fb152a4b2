"""`keyturn channels test|list|enable`, `keyturn outbox list|retry`: a real receiver and database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import RequestFactory
from keyturn.channels.plan import PlanConfig, planner
from keyturn.cli import app
from keyturn.redact import UNKEYED
from keyturn.store import Store
from keyturn.store.outbox import DEAD, Outbox, Outcome
from support.channels import webhook_settings
from support.webhook_receiver import WebhookReceiver, new_ed25519_pem


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    try:
        yield started
    finally:
        started.stop()


def write_config(tmp_path: Path, receiver: WebhookReceiver, pem: str | None = None) -> Path:
    config = {
        "database": f"sqlite:///{tmp_path / 'k.db'}",
        "public_url": "https://keyturn.example",
        **webhook_settings(tmp_path / "secrets", {"siem": receiver}, ed25519_pem=pem),
    }
    path = tmp_path / "keyturn.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_channels_test_sends_a_signed_test_event(tmp_path: Path, receiver: WebhookReceiver) -> None:
    pem, public = new_ed25519_pem()
    receiver.public_key = public
    config = write_config(tmp_path, receiver, pem)
    code, out = run("channels", "test", "webhook:siem", "--config", str(config))
    assert code == 0, out
    assert "sent a test message to webhook:siem" in out
    [got] = receiver.received
    assert got.v1_ok and got.v1a_ok and got.json["type"] == "keyturn.test"
    assert got.json["data"]["review_url"].startswith("https://keyturn.example/")


def test_channels_test_says_what_went_wrong(tmp_path: Path, receiver: WebhookReceiver) -> None:
    config = write_config(tmp_path, receiver)
    code, out = run("channels", "test", "webhook:nowhere", "--config", str(config))
    assert code == 2 and "webhook:nowhere is not defined" in out and "webhook:siem" in out
    receiver.respond = lambda _attempt: (302, {"Location": "http://127.0.0.1:1/elsewhere"})
    code, out = run("channels", "test", "webhook:siem", "--config", str(config))
    assert code == 1 and "redirects are not followed" in out
    assert len(receiver.received) == 1  # the redirect was not followed


def test_outbox_list_retry_and_enable(
    tmp_path: Path, receiver: WebhookReceiver, factory: RequestFactory
) -> None:
    config = write_config(tmp_path, receiver)
    database = f"sqlite:///{tmp_path / 'k.db'}"
    with Store.open(database) as store:
        store.upgrade()
        store.planner = planner(PlanConfig(base_url="https://keyturn.example", redactor=UNKEYED))
        verdict = factory.review_verdict("sre")
        assert verdict.route is not None
        verdict = verdict.model_copy(
            update={"route": verdict.route.model_copy(update={"notify": ("webhook:siem",)})}
        )
        record = factory.insert(store, verdict)
        outbox = Outbox(store)
        [row] = outbox.list_rows()
        now = datetime.now(UTC)
        claimed = outbox.claim(factory.now, 10, "cli-test", now + timedelta(seconds=30))
        assert [c.row.id for c in claimed] == [row.id]
        outbox.finish([Outcome(row.seq, DEAD, 8, error="webhook:siem: answered 503")], "cli-test", now)
        outbox.disable_target("webhook:siem", "webhook:siem: 410 Gone", now)
        assert record.status.value == "pending"

    code, out = run("outbox", "list", "--dead", "--config", str(config))
    assert code == 0 and row.id in out and "answered 503" in out and "1 dead" in out
    assert "webhook:siem is disabled" in out
    code, out = run("channels", "list", "--config", str(config))
    assert code == 0 and "webhook:siem  disabled" in out
    code, out = run("outbox", "retry", "--dead", "--config", str(config))
    assert code == 0 and "1 row due again" in out and "disabled targets stay disabled" in out
    code, out = run("channels", "enable", "webhook:siem", "--config", str(config))
    assert code == 0 and "is enabled" in out
    code, out = run("channels", "enable", "webhook:siem", "--config", str(config))
    assert code == 1 and "is not disabled" in out
    code, out = run("outbox", "retry", "msg_nosuch", "--config", str(config))
    assert code == 1 and "no outbox row msg_nosuch" in out
    code, out = run("outbox", "retry", "--config", str(config))
    assert code == 2
    code, out = run("outbox", "list", "--config", str(config))
    assert code == 0 and "1 pending" in out
