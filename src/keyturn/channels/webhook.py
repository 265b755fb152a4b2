"""Webhooks: Standard Webhooks (https://www.standardwebhooks.com), one event per transition.

Every POST carries `webhook-id` (the outbox row id: the same on every retry, so a receiver drops
duplicates), `webhook-timestamp` and `webhook-signature` with a `v1` HMAC-SHA256 signature (the
`standardwebhooks` library, given the endpoint's `whsec_…` secret) and/or a `v1a` Ed25519 signature over the
same `id.timestamp.body` (given a private key; the receiver holds the public key). The body is thin and
redacted: it is built from the one redacted view of the request, never from the request itself.

Endpoints come only from configuration (`channels.webhooks`); a policy names them (`webhook:siem`).
Redirects are never followed (a 3xx is a failure), every attempt is bounded by a timeout, and `410 Gone`
switches the endpoint off until an admin turns it on again (`keyturn channels enable webhook:NAME`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from standardwebhooks.webhooks import Webhook

from keyturn import __version__
from keyturn.channels.base import Delivery, DeliveryFailed, DeliveryKind, MessageRef
from keyturn.channels.registry import ChannelConfigError, read_secret
from keyturn.config import Settings

KIND = "webhook"
TEST_EVENT = "keyturn.test"


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    hmac: Webhook | None  # v1
    ed25519: Ed25519PrivateKey | None  # v1a


def load_ed25519_private_key(pem: str) -> Ed25519PrivateKey:
    key = load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the v1a signing key must be an Ed25519 private key (PEM)")
    return key


def sign(endpoint: Endpoint, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: space-separated `v1,…` and/or `v1a,…` signatures."""
    signatures = []
    if endpoint.hmac is not None:
        signatures.append(endpoint.hmac.sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body))
    if endpoint.ed25519 is not None:
        signed = f"{msg_id}.{timestamp}.".encode() + body
        signatures.append("v1a," + base64.b64encode(endpoint.ed25519.sign(signed)).decode())
    return " ".join(signatures)


def event_type(delivery: Delivery) -> str:
    if delivery.kind is DeliveryKind.TEST:
        return TEST_EVENT
    if delivery.kind is DeliveryKind.ESCALATE:
        return "request.escalated"
    return delivery.event_type


def payload(delivery: Delivery, base_url: str, now: datetime) -> dict[str, Any]:
    """The thin body: what happened and where to look. Everything in it comes from the redacted view."""
    view = delivery.view
    verdict = view.get("verdict") or {}
    data = {
        "id": view.get("id"),
        "status": view.get("status"),
        "action": view.get("action"),
        "resource": view.get("resource"),
        "requester": (view.get("requester") or {}).get("id"),
        "on_behalf_of": view.get("on_behalf_of"),
        "tier": verdict.get("tier"),
        "still_needed": view.get("still_needed", []),
        "expires_at": view.get("expires_at"),
        "api_url": f"{base_url}/v1/actions/{view.get('id')}" if view.get("id") else None,
        "review_url": view.get("review_url"),
    }
    return {"type": event_type(delivery), "timestamp": now.isoformat(), "data": data}


class WebhookChannel:
    kind = KIND

    def __init__(
        self,
        endpoints: dict[str, Endpoint],
        *,
        base_url: str,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(
            follow_redirects=False,  # a redirect could lead a signed event anywhere: never follow one
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            # a few kept-alive connections per replica: gentle on receivers, and httpcore's pool grows
            # slower, not faster, with many more
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
            headers={"user-agent": f"keyturn/{__version__}"},
        )

    async def post(self, delivery: Delivery) -> MessageRef | None:
        name = delivery.target.split(":", 1)[1] if ":" in delivery.target else delivery.target
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise DeliveryFailed(f"no webhook endpoint named {name!r} is configured", permanent=True)
        now = datetime.now(UTC)
        body = json.dumps(
            payload(delivery, self.base_url, now), separators=(",", ":"), ensure_ascii=False
        ).encode()
        timestamp = int(now.timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(endpoint, delivery.id, timestamp, body),
        }
        try:
            response = await self._client.post(endpoint.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(f"{delivery.target}: timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{delivery.target}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return None
        if status == 410:
            raise DeliveryFailed(f"{delivery.target}: 410 Gone: the endpoint is disabled", disable=True)
        if 300 <= status < 400:
            raise DeliveryFailed(
                f"{delivery.target}: answered {status} (a redirect); redirects are not followed: "
                "configure the final URL",
                permanent=True,
            )
        raise DeliveryFailed(
            f"{delivery.target}: answered {status}",
            retry_after=retry_after(response.headers.get("retry-after")),
        )

    async def update(self, ref: MessageRef, delivery: Delivery) -> None:
        """Webhooks have no message to update: every transition is its own event (`post`)."""
        await self.post(delivery)

    async def aclose(self) -> None:
        await self._client.aclose()


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from an HTTP `Retry-After` (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def from_settings(settings: Settings, store: object = None) -> WebhookChannel | None:
    """The configured endpoints; None when there are none. Each needs a `secret` (v1), a `signing_key`
    (v1a) or both: an unsigned event would be worthless to a receiver that must trust it."""
    configured = settings.channels.webhooks
    if not configured:
        return None
    endpoints = {}
    for name, spec in configured.items():
        where = f"channels.webhooks.{name}"
        if not spec.url.startswith(("https://", "http://")):
            raise ChannelConfigError(f"{where}.url: must be an http(s) URL, not {spec.url!r}")
        if spec.secret is None and spec.signing_key is None:
            raise ChannelConfigError(f"{where}: give `secret` (v1, HMAC) or `signing_key` (v1a, Ed25519)")
        hmac = None
        if spec.secret is not None:
            try:
                hmac = Webhook(read_secret(spec.secret, f"{where}.secret"))
            except (ValueError, binascii.Error) as exc:
                raise ChannelConfigError(f"{where}.secret: not a whsec_ secret: {exc}") from exc
        ed25519 = None
        if spec.signing_key is not None:
            try:
                ed25519 = load_ed25519_private_key(read_secret(spec.signing_key, f"{where}.signing_key"))
            except ValueError as exc:
                raise ChannelConfigError(f"{where}.signing_key: {exc}") from exc
        endpoints[name] = Endpoint(name, spec.url, hmac, ed25519)
    delivery = settings.channels.delivery
    return WebhookChannel(endpoints, base_url=settings.base_url, timeout=delivery.timeout.total_seconds())
