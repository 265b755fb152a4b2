"""Notify targets are checked against `channels:`; the webhook channel's pure parts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from keyturn.channels.base import Delivery, DeliveryKind
from keyturn.channels.registry import ChannelConfigError, build_channels, target_defined, target_names
from keyturn.channels.webhook import payload, retry_after
from keyturn.cli import app
from keyturn.config import Settings
from keyturn.policy import PolicyError, load_policy

POLICY = """\
version: 1
defaults: {decision: review, approvers: [security], notify: ["webhook:siem"]}
tiers:
  high: {quorum: 1, approvers: [sre], notify: ["slack:#ops"]}
rules:
  - name: exports
    match: {action: db.export}
    decision: review
    tier: high
    escalate:
      - after: 5m
        notify: ["teams:oncall", "webhook:pager"]
"""


def settings(**channels: object) -> Settings:
    return Settings(channels=channels)


def test_every_undefined_target_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    names = target_names(settings(webhooks={"siem": {"url": "https://siem.example/hook"}}))
    with pytest.raises(PolicyError) as failed:
        load_policy([path], targets=names)
    problems = [str(p) for p in failed.value.problems]
    assert len(problems) == 3
    assert any(p.startswith(f"{path}:4:") and "'slack:#ops'" in p for p in problems)
    assert any(p.startswith(f"{path}:12:") and "'teams:oncall'" in p for p in problems)
    assert any(p.startswith(f"{path}:12:") and "'webhook:pager'" in p for p in problems)
    assert all("defined: webhook:siem" in p for p in problems)
    load_policy([path])  # without a configuration the targets are not checked


def test_a_configured_slack_accepts_any_channel_name_and_teams_only_its_conversations() -> None:
    names = target_names(
        settings(
            slack={"bot_token": {"env": "X"}, "signing_secret": {"env": "Y"}},
            teams={
                "app_id": "a",
                "tenant_id": "t",
                "app_secret": {"env": "Z"},
                "conversations": {"oncall": {"conversation_id": "c", "service_url": "https://s"}},
            },
        )
    )
    assert target_defined("slack:#anything", names) and target_defined("teams:oncall", names)
    assert not target_defined("teams:other", names) and not target_defined("webhook:siem", names)


def test_policy_check_with_a_config_checks_targets(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    config = tmp_path / "keyturn.yaml"
    config.write_text(yaml.safe_dump({"channels": {"webhooks": {}}}), encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(app, ["policy", "check", str(path)]).exit_code == 0
    result = runner.invoke(app, ["policy", "check", str(path), "--config", str(config)])
    assert result.exit_code == 1 and "'webhook:siem' is not defined" in result.output


def test_an_unsigned_or_misconfigured_webhook_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(ChannelConfigError, match=r"channels\.webhooks\.siem: give `secret`"):
        build_channels(settings(webhooks={"siem": {"url": "https://siem.example/hook"}}))
    with pytest.raises(ChannelConfigError, match=r"KEYTURN_TEST_UNSET_SECRET is not set"):
        build_channels(
            settings(
                webhooks={
                    "siem": {"url": "https://x.example", "secret": {"env": "KEYTURN_TEST_UNSET_SECRET"}}
                }
            )
        )
    bad = tmp_path / "key.pem"
    bad.write_text("not a key", encoding="utf-8")
    with pytest.raises(ChannelConfigError, match=r"signing_key"):
        build_channels(
            settings(webhooks={"siem": {"url": "https://x.example", "signing_key": {"file": str(bad)}}})
        )


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert retry_after("7", now) == 7.0
    assert retry_after("Tue, 01 Jan 2030 12:00:30 GMT", now) == 30.0
    assert retry_after("Tue, 01 Jan 2030 11:00:00 GMT", now) == 0.0
    assert retry_after("soon", now) is None and retry_after(None, now) is None


def test_the_payload_is_thin_and_comes_from_the_view() -> None:
    view = {
        "id": "req_1",
        "status": "pending",
        "action": "db.export",
        "resource": "postgres://[redacted]@prod",
        "params": {"connection_string": "[redacted]"},
        "justification": "x",
        "requester": {"id": "agent:bot", "kind": "agent"},
        "on_behalf_of": None,
        "verdict": {"tier": "high"},
        "still_needed": ["1 from sre"],
        "expires_at": None,
        "review_url": "https://k.example/v1/actions/req_1",
    }
    delivery = Delivery("msg_1", DeliveryKind.EVENT, "webhook:siem", "request.pending", view)
    body = payload(delivery, "https://k.example", datetime(2030, 1, 1, tzinfo=UTC))
    assert body["type"] == "request.pending"
    assert set(body["data"]) == {
        "id", "status", "action", "resource", "requester", "on_behalf_of", "tier", "still_needed",
        "expires_at", "api_url", "review_url",
    }  # fmt: skip
    assert body["data"]["api_url"] == "https://k.example/v1/actions/req_1" and body["data"]["tier"] == "high"
    escalation = Delivery("msg_2", DeliveryKind.ESCALATE, "webhook:pager", "request.escalated", view)
    assert (
        payload(escalation, "https://k.example", datetime(2030, 1, 1, tzinfo=UTC))["type"]
        == "request.escalated"
    )
