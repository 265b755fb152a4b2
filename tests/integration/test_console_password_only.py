"""A console with password login only (no OIDC issuer configured, as `make serve` runs it) serves its pages:
its Content-Security-Policy header must be a valid header value without any form target besides 'self'."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from keyturn.identity.users import set_user_password


def test_pages_of_a_password_only_console_are_served(live_server: Any) -> None:
    set_user_password(live_server.workdir / "users.yaml", "user:alice@example.com", "alice's password 1")
    login = httpx.post(
        live_server.url + "/console/login",
        data={"user": "alice@example.com", "password": "alice's password 1"},
        headers={"Origin": live_server.url},
    )
    assert login.status_code == 303, login.text[:300]
    for path in ("/console/", "/console/chat-accounts", "/console/passkeys", "/console/sessions"):
        page = httpx.get(live_server.url + path, cookies=login.cookies)
        assert page.status_code == 200, (path, page.status_code)
        assert page.headers["content-security-policy"].endswith("form-action 'self'")


def test_the_console_verifies_the_live_ledger_with_passkey_signatures(live_server: Any) -> None:
    """The ledger page's live verification checks passkey-signed reviews (a changed signature is named)."""
    import json

    from sqlalchemy import select, update

    from keyturn import passkeys, workflow
    from keyturn.accounts import Accounts
    from keyturn.model import (
        Authentication,
        AuthMethod,
        Principal,
        PrincipalKind,
        ReviewDecision,
        params_digest,
    )
    from keyturn.store import Store
    from keyturn.store.schema import events
    from support.soft_authenticator import ORIGIN, RP_ID, SoftAuthenticator

    alice = Principal(id="user:alice@example.com", kind=PrincipalKind.HUMAN, groups=frozenset({"sre"}))
    device = SoftAuthenticator()
    created = live_server.client("agent:deploy-bot").submit("db.export", params={"rows": 3})
    store = Store.open(live_server.database_url)
    try:
        Accounts(store, lambda: datetime.now(UTC)).register_passkey(
            alice,
            credential_id=passkeys.b64(device.key_id),
            public_key=passkeys.b64(device.cose),
            sign_count=0,
            name="laptop",
            transports=[],
            rp_id=RP_ID,
            origin=ORIGIN,
        )
        record = store.get(created["id"])
        assert record is not None
        document = passkeys.statement(
            request_id=record.id,
            action=record.request.action,
            resource=record.request.resource,
            params_digest=params_digest(record.request.params),
            decision="approve",
            reviewer=alice.id,
        )
        assertion = device.assert_(passkeys.new_challenge(document))
        now = record.updated_at
        signer = alice.model_copy(
            update={"authn": Authentication(method=AuthMethod.PASSKEY, at=now, passkey=assertion)}
        )
        done = workflow.review(record, signer, ReviewDecision.APPROVE, "", now, grant_id="gr_console_verify")
        store.apply(done, record.version)
    finally:
        store.close()

    set_user_password(live_server.workdir / "users.yaml", "user:erin@example.com", "erin the auditor 1")
    login = httpx.post(
        live_server.url + "/console/login",
        data={"user": "erin@example.com", "password": "erin the auditor 1"},
        headers={"Origin": live_server.url},
    )
    verified = httpx.get(live_server.url + "/console/ledger/verify", cookies=login.cookies)
    assert 'data-ok="true"' in verified.text and "1 passkey signature verified" in verified.text

    store = Store.open(live_server.database_url)
    try:
        with store.engine.begin() as conn:
            seq, payload = conn.execute(
                select(events.c.seq, events.c.payload).where(
                    events.c.request_id == created["id"], events.c.type == "request.reviewed"
                )
            ).one()
            changed = json.loads(payload)
            signature = changed["passkey"]["signature"]
            changed["passkey"]["signature"] = signature[:-2] + ("00" if signature[-2:] != "00" else "11")
            conn.execute(update(events).where(events.c.seq == seq).values(payload=json.dumps(changed)))
    finally:
        store.close()
    tampered = httpx.get(live_server.url + "/console/ledger/verify", cookies=login.cookies)
    assert 'data-ok="false"' in tampered.text and 'data-code="bad_passkey_signature"' in tampered.text
