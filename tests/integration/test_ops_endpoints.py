"""What operators scrape and read: the pending-queue gauges of /metrics, and no CDN-backed /docs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from support.live import LiveServer

AGENT = "agent:deploy-bot"


def gauges(server: LiveServer) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("keyturn_pending_requests", "keyturn_oldest_pending_request_age_seconds")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_pending_requests_by_tier_and_the_age_of_the_oldest(live_server: LiveServer) -> None:
    assert gauges(live_server) == {"keyturn_oldest_pending_request_age_seconds": 0.0}
    with live_server.client(AGENT) as agent:
        critical = [agent.submit("k8s.delete", f"k8s://prod/{i}", {})["id"] for i in range(2)]
        export = agent.submit("db.export", "postgres://prod/customers", {"rows": 10})["id"]
        assert agent.submit("test.allow", "svc://x", {})["status"] == "allowed"  # not pending: not counted
    seen = gauges(live_server)
    assert seen['keyturn_pending_requests{tier="critical"}'] == 2.0
    assert seen['keyturn_pending_requests{tier="none"}'] == 1.0
    assert seen["keyturn_oldest_pending_request_age_seconds"] > 0.0
    with live_server.client("user:alice@example.com") as alice:
        alice.review(export, "approve", "ok")
    with live_server.client(AGENT) as agent:
        for request_id in critical:
            agent.cancel(request_id)
    assert gauges(live_server) == {"keyturn_oldest_pending_request_age_seconds": 0.0}


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_no_api_viewer_that_needs_a_cdn_is_served(live_server: LiveServer, path: str) -> None:
    assert httpx.get(f"{live_server.url}{path}").status_code == 404


def test_the_openapi_document_is_served_and_names_the_public_keys(live_server: LiveServer) -> None:
    spec: dict[str, Any] = httpx.get(f"{live_server.url}/openapi.json").json()
    assert "/v1/admin/api-keys" in spec["paths"]
    assert "JWKS" in spec["paths"]["/v1/keys"]["get"]["summary"]
