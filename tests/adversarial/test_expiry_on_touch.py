"""A review that arrives after the deadline is refused AND expires the request at once, without waiting for
the timer sweep (here: an hour away), so nobody sees a stale `pending`."""

from __future__ import annotations

import time
from typing import Any

import httpx

POLICY = """\
version: 1
defaults: {decision: review, approvers: [sre], ttl: 1s}
rules: []
"""


def test_a_late_review_expires_the_request_on_the_spot(live_servers: Any) -> None:
    server = live_servers(policy=POLICY, settings={"timer_interval": 3600})
    with server.client("agent:deploy-bot") as agent:
        submitted = agent.submit("db.migrate", "postgres://prod/app", {})
    assert submitted["status"] == "pending"
    time.sleep(1.2)  # past the 1 s deadline; the timer will not sweep for an hour
    late = httpx.post(
        f"{server.url}/v1/actions/{submitted['id']}/reviews",
        json={"decision": "approve"},
        headers=server.headers("user:alice@example.com"),
    )
    assert late.status_code == 409 and late.json()["error"]["code"] == "request_expired"
    with server.client("agent:deploy-bot") as agent:
        assert agent.get(submitted["id"])["status"] == "expired"
