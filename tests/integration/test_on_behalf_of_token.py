"""A verified on-behalf-of (issue #13 §2): the agent proves whom it acts for with an OAuth 2.0 token-exchange
token (RFC 8693) from a configured issuer, whose `act` claim names the agent. The ledger says whether the
on-behalf-of was verified or only asserted, and policy can require the proof (`on_behalf_of_verified`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support.live import DEFAULT_POLICY
from support.oidc import AUDIENCE, RSA_KEY_2, IdentityProvider, SigningKeyPair, running_provider

HEADER = "X-Keyturn-On-Behalf-Of-Token"
POLICY = (
    DEFAULT_POLICY
    + """\
  - name: payroll on behalf of a human needs proof
    match: {action: "payroll.*"}
    when: "on_behalf_of != null && !on_behalf_of_verified"
    decision: deny
    reason: prove whom you act for (X-Keyturn-On-Behalf-Of-Token)
  - name: payroll
    match: {action: "payroll.*"}
    decision: allow
"""
)


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with running_provider() as state:
        yield state


@pytest.fixture(scope="module")
def server(idp: IdentityProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from support.live import start_server

    live = start_server(
        tmp_path_factory.mktemp("obo"),
        policy=POLICY,
        settings={"issuers": [{"issuer": idp.url, "audience": AUDIENCE}]},
    )
    try:
        yield live
    finally:
        live.stop()


def exchanged(idp: IdentityProvider, actor: Any = "agent:deploy-bot", **claims: Any) -> str:
    """What the identity provider's token endpoint answers a token exchange with: olivia, acted for."""
    act = {"sub": actor} if isinstance(actor, str) else actor
    return idp.token(email="olivia@example.com", groups=["sre"], act=act, **claims)


def submit(server: Any, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/actions",
        json={"action": "payroll.run", "resource": "acme", **body},
        headers={**server.headers("agent:deploy-bot"), **(headers or {})},
        timeout=30,
    )


def submitted_event(server: Any, request_id: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{server.url}/v1/ledger/events",
        params={"request_id": request_id},
        headers=server.headers("user:erin@example.com"),
        timeout=30,
    )
    event: dict[str, Any] = next(e for e in answer.json()["items"] if e["type"] == "request.submitted")
    return event["payload"]


def test_a_token_exchange_token_verifies_on_behalf_of(server: Any, idp: IdentityProvider) -> None:
    proven = submit(server, {HEADER: exchanged(idp)})
    assert proven.status_code == 201, proven.text
    assert proven.json()["status"] == "allowed"  # the policy asks for the proof, and has it
    assert proven.json()["on_behalf_of"] == "user:olivia@example.com"  # from the token's subject
    payload = submitted_event(server, proven.json()["id"])
    assert payload["on_behalf_of"] == "user:olivia@example.com" and payload["on_behalf_of_verified"] is True
    # the act claim may name the agent without its prefix; the body may repeat the same human
    again = submit(server, {HEADER: exchanged(idp, "Deploy-Bot")}, on_behalf_of="user:Olivia@example.com")
    assert again.status_code == 201 and again.json()["status"] == "allowed", again.text


def test_a_self_asserted_on_behalf_of_is_recorded_as_such(server: Any) -> None:
    asserted = submit(server, on_behalf_of="user:olivia@example.com")
    assert asserted.status_code == 201, asserted.text
    assert asserted.json()["status"] == "denied"  # this policy requires the proof
    payload = submitted_event(server, asserted.json()["id"])
    assert payload["on_behalf_of"] == "user:olivia@example.com" and payload["on_behalf_of_verified"] is False
    nobody = submit(server)
    assert nobody.json()["status"] == "allowed"  # acting for no one needs no proof


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (
            lambda idp: exchanged(idp, "agent:exec-bot"),
            "names 'agent:exec-bot', not the caller agent:deploy-bot",
        ),
        (lambda idp: exchanged(idp, None), "no `act` claim"),
        (lambda idp: exchanged(idp, {"act": {"sub": "agent:deploy-bot"}}), "no `act` claim"),  # nested only
        (lambda idp: exchanged(idp, exp=int(time.time()) - 600), "expired"),
        (lambda idp: exchanged(idp, aud="someone-else"), "audience"),
        (lambda idp: exchanged(idp, iss="https://evil.example"), "issuer is not trusted"),
        (
            lambda idp: idp.token(
                SigningKeyPair("rsa-1", "RS256", RSA_KEY_2), act={"sub": "agent:deploy-bot"}
            ),
            "",
        ),
        (lambda idp: "not-a-jwt", "not a JWT"),
    ],
)
def test_a_token_that_does_not_prove_it_is_refused(
    server: Any, idp: IdentityProvider, token: Any, message: str
) -> None:
    refused = submit(server, {HEADER: token(idp)})
    assert refused.status_code == 403, refused.text
    assert HEADER in refused.json()["error"]["message"] and message in refused.json()["error"]["message"]


def test_the_body_cannot_contradict_the_token(server: Any, idp: IdentityProvider) -> None:
    refused = submit(server, {HEADER: exchanged(idp)}, on_behalf_of="user:bob@example.com")
    assert refused.status_code == 403 and "must agree" in refused.json()["error"]["message"]
