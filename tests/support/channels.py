"""Live servers wired to a webhook receiver: the policy routes requests to `webhook:siem`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.webhook_receiver import SECRET, WebhookReceiver

WEBHOOK_POLICY = """\
version: 1
defaults:
  decision: review
  approvers: [security]
  ttl: 1h
rules:
  - name: exports need an sre
    match: {action: db.export}
    decision: review
    quorum: 1
    approvers: [sre]
    redact: [params.connection_string]
    notify: ["webhook:siem"]
  - name: deploys escalate
    match: {action: k8s.deploy}
    decision: review
    quorum: 1
    approvers: [sre]
    escalate: [{after: ESCALATE_AFTER, notify: ["webhook:oncall"]}]
  - name: quiet
    match: {action: quiet.thing}
    decision: review
    quorum: 1
    approvers: [sre]
    redact: [params.connection_string]
"""

FAST_RETRIES = {"retry_schedule": [0.2, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], "jitter": 0.1}


def webhook_settings(
    workdir: Path,
    receivers: dict[str, WebhookReceiver],
    *,
    delivery: dict[str, Any] | None = None,
    ed25519_pem: str | None = None,
) -> dict[str, Any]:
    """`channels:` for keyturn.yaml: each receiver as a webhook endpoint, secrets in files."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "whsec").write_text(SECRET, encoding="utf-8")
    hooks: dict[str, Any] = {}
    for name, receiver in receivers.items():
        spec: dict[str, Any] = {"url": receiver.url, "secret": {"file": str(workdir / "whsec")}}
        if ed25519_pem is not None:
            (workdir / "ed25519.pem").write_text(ed25519_pem, encoding="utf-8")
            spec["signing_key"] = {"file": str(workdir / "ed25519.pem")}
        hooks[name] = spec
    return {"channels": {"webhooks": hooks, "delivery": {**FAST_RETRIES, **(delivery or {})}}}


def policy(escalate_after: str = "1h") -> str:
    return WEBHOOK_POLICY.replace("ESCALATE_AFTER", escalate_after)
