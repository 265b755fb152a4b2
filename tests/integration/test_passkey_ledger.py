"""A passkey's registration is its own ledger event, and verification (of the live database, as of a bundle)
checks every passkey-signed review against the key the log registered for its reviewer. SQLite and
PostgreSQL; real WebAuthn assertions from a software authenticator."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select, update

from keyturn import passkeys, workflow
from keyturn.accounts import Accounts
from keyturn.errors import NotFound
from keyturn.ledger.live import verify_store
from keyturn.model import Authentication, AuthMethod, Principal, ReviewDecision, params_digest
from keyturn.store import Store
from keyturn.store.schema import events
from support.soft_authenticator import ORIGIN, RP_ID, SoftAuthenticator

ALICE = "alice"


def register(accounts: Accounts, who: Principal, device: SoftAuthenticator) -> None:
    accounts.register_passkey(
        who,
        credential_id=passkeys.b64(device.key_id),
        public_key=passkeys.b64(device.cose),
        sign_count=0,
        name="laptop",
        transports=["internal"],
        rp_id=RP_ID,
        origin=ORIGIN,
    )


def signed_approval(store: Store, factory: Any, reviewer: Principal, device: SoftAuthenticator) -> str:
    record = factory.insert(store)
    document = passkeys.statement(
        request_id=record.id,
        action=record.request.action,
        resource=record.request.resource,
        params_digest=params_digest(record.request.params),
        decision="approve",
        reviewer=reviewer.id,
    )
    signer = reviewer.model_copy(
        update={
            "authn": Authentication(
                method=AuthMethod.PASSKEY,
                at=factory.now,
                passkey=device.assert_(passkeys.new_challenge(document)),
            )
        }
    )
    done = workflow.review(
        record, signer, ReviewDecision.APPROVE, "", factory.tick(), grant_id=factory.grant_id()
    )
    store.apply(done, record.version)
    return str(record.id)


@pytest.fixture
def accounts(store: Store, factory: Any) -> Accounts:
    return Accounts(store, lambda: factory.now)


def test_registration_is_ledgered_with_the_public_key_and_anchors_the_review(
    store: Store, factory: Any, accounts: Accounts
) -> None:
    alice, device = factory.human(ALICE, "sre"), SoftAuthenticator()
    register(accounts, alice, device)
    registered = [e for e in store.events(after_seq=-1, limit=100) if e.type == "passkey.registered"]
    assert len(registered) == 1 and registered[0].actor == alice.id
    assert registered[0].payload["passkey"]["public_key"] == device.cose.hex()
    assert registered[0].payload["passkey"]["key_id"] == device.key_id.hex()

    signed_approval(store, factory, alice, device)
    result = verify_store(store, [], [])
    assert result.ok, result.problem
    assert result.passkey_signatures == 1


def test_a_review_signed_with_an_unregistered_key_is_named(store: Store, factory: Any) -> None:
    # The signature itself verifies (the key is carried beside it): only the registration says whose it is.
    signed_approval(store, factory, factory.human(ALICE, "sre"), SoftAuthenticator())
    result = verify_store(store, [], [])
    assert result.problem is not None and result.problem.code == "bad_passkey_signature"
    assert "never registered" in result.problem.message


def test_a_key_registered_by_someone_else_does_not_sign_for_the_reviewer(
    store: Store, factory: Any, accounts: Accounts
) -> None:
    device = SoftAuthenticator()
    register(accounts, factory.human("bob", "sre"), device)
    signed_approval(store, factory, factory.human(ALICE, "sre"), device)
    result = verify_store(store, [], [])
    assert result.problem is not None and result.problem.code == "bad_passkey_signature"
    assert "registered by user:bob@example.com" in result.problem.message


def test_a_revoked_key_signs_nothing_after_its_revocation(
    store: Store, factory: Any, accounts: Accounts
) -> None:
    alice, device = factory.human(ALICE, "sre"), SoftAuthenticator()
    register(accounts, alice, device)
    signed_approval(store, factory, alice, device)
    assert verify_store(store, [], []).ok
    accounts.revoke_passkey(alice, passkeys.b64(device.key_id))
    with pytest.raises(NotFound):
        accounts.revoke_passkey(alice, passkeys.b64(device.key_id))  # once: the second is no event
    assert [e.type for e in store.events(after_seq=-1, limit=100)].count("passkey.revoked") == 1
    signed_approval(store, factory, alice, device)  # the workflow itself does not know about revocation
    result = verify_store(store, [], [])
    assert result.problem is not None and "revoked at seq" in result.problem.message


def test_the_live_database_check_verifies_passkey_signatures(
    store: Store, factory: Any, accounts: Accounts
) -> None:
    alice, device = factory.human(ALICE, "sre"), SoftAuthenticator()
    register(accounts, alice, device)
    request_id = signed_approval(store, factory, alice, device)
    with store.engine.begin() as conn:
        seq, payload = conn.execute(
            select(events.c.seq, events.c.payload).where(
                events.c.request_id == request_id, events.c.type == "request.reviewed"
            )
        ).one()
        changed = json.loads(payload)
        signature = changed["passkey"]["signature"]
        changed["passkey"]["signature"] = signature[:-2] + ("00" if signature[-2:] != "00" else "11")
        conn.execute(update(events).where(events.c.seq == seq).values(payload=json.dumps(changed)))
    result = verify_store(store, [], [])
    assert result.problem is not None and result.problem.code == "bad_passkey_signature", result.problem
    assert f"seq {seq}" in result.problem.message
