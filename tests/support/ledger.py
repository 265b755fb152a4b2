"""Helpers shared by the ledger tests (not a test module itself: no test functions)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keyturn import workflow
from keyturn.ledger.checkpointer import Checkpointer, WitnessPublisher
from keyturn.ledger.note import NoteSigner
from keyturn.model import RequestRecord, ReviewDecision
from keyturn.store import Store

if TYPE_CHECKING:
    from conftest import RequestFactory

ORIGIN = "test.keyturn/ledger"


def make_signer(kid: str = "k1", private: Ed25519PrivateKey | None = None) -> NoteSigner:
    return NoteSigner(f"{ORIGIN}/{kid}", private or Ed25519PrivateKey.generate())


def register(store: Store, signer: NoteSigner, factory: RequestFactory) -> None:
    store.add_ledger_key(signer.name, str(signer.verifier), factory.now)


def run_request(store: Store, factory: RequestFactory, *, succeed: bool = True) -> RequestRecord:
    """Submit, approve (one sre), consume and report: seven events through the real workflow."""
    record = factory.insert(store)
    alice = factory.human("alice", "sre")
    step = workflow.review(
        record, alice, ReviewDecision.APPROVE, "ok", factory.tick(), grant_id=factory.grant_id()
    )
    record = store.apply(step, record.version)
    grant = record.grant
    assert grant is not None
    presented = workflow.GrantPresentation(
        grant.id, record.id, record.request.action, record.request.resource, grant.params_digest
    )
    record = store.apply(
        workflow.consume_grant(record, presented, factory.agent, factory.tick()), record.version
    )
    return store.apply(workflow.report_result(record, factory.agent, succeed, factory.tick()), record.version)


def build_ledger(
    store: Store, factory: RequestFactory, signer: NoteSigner, witness: Path | None = None, requests: int = 6
) -> Checkpointer:
    """`requests` approved-and-executed requests plus one denied one, a checkpoint after each request."""
    register(store, signer, factory)
    checkpointer = Checkpointer(
        store,
        signer,
        ORIGIN,
        every=5,
        interval=3600,
        witness=WitnessPublisher(witness, []),
        clock=lambda: factory.now,
    )
    checkpointer.start()
    for _ in range(requests):
        run_request(store, factory)
        checkpointer.checkpoint()
    record = factory.insert(store)
    bob = factory.human("bob", "sre")
    store.apply(
        workflow.review(record, bob, ReviewDecision.DENY, "no", factory.tick(), grant_id=factory.grant_id()),
        record.version,
    )
    checkpointer.checkpoint(force=True)
    return checkpointer
