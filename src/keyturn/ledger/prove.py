"""Inclusion proofs for one event, as a JSON document anyone can check with the public key alone.

The document carries the event, its leaf index, the audit path, and the signed checkpoint whose root the
path leads to. `check_inclusion_document` recomputes the leaf from the event (RFC 8785), verifies the
checkpoint's signature and the audit path; it needs only the standard library, `cryptography` and `rfc8785`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import rfc8785

from keyturn.ledger.merkle import MerkleTree, ProofError, hash_leaf, verify_inclusion
from keyturn.ledger.note import NoteError, SignatureError, SignedCheckpoint, VerifierKey

FORMAT = "keyturn-inclusion-proof/1"


class InvalidProof(ValueError):
    """A proof document that does not prove what it claims; the message says why."""


def inclusion_document(
    leaf: bytes, index: int, tree: MerkleTree, checkpoint_note: str, verifier_key: str | None
) -> dict[str, Any]:
    checkpoint = SignedCheckpoint.parse(checkpoint_note)
    return {
        "format": FORMAT,
        "event": json.loads(leaf),
        "leaf_index": index,
        "leaf_hash": hash_leaf(leaf).hex(),
        "tree_size": checkpoint.size,
        "root_hash": checkpoint.root.hex(),
        "audit_path": [h.hex() for h in tree.inclusion_proof(index, checkpoint.size)],
        "checkpoint": checkpoint_note,
        "verifier_key": verifier_key,
    }


def check_inclusion_document(document: Any, trusted: Sequence[VerifierKey] = ()) -> str:
    """Return a one-line description of what is proven, or raise `InvalidProof`."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InvalidProof(f"not a {FORMAT} document")
    try:
        event = document["event"]
        index = int(document["leaf_index"])
        size = int(document["tree_size"])
        path = [bytes.fromhex(h) for h in document["audit_path"]]
        checkpoint = SignedCheckpoint.parse(document["checkpoint"])
        keys = list(trusted) or [VerifierKey.parse(document["verifier_key"])]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidProof(f"malformed proof document: {exc}") from exc
    if not isinstance(event, dict) or event.get("seq") != index:
        raise InvalidProof(f"the event's seq is not the leaf index {index}")
    if checkpoint.size != size:
        raise InvalidProof(f"the checkpoint is of size {checkpoint.size}, the proof claims {size}")
    try:
        signer = checkpoint.verify(keys)
    except SignatureError as exc:
        raise InvalidProof(f"checkpoint: {exc}") from exc
    except NoteError as exc:  # pragma: no cover - parse errors are raised above
        raise InvalidProof(str(exc)) from exc
    leaf = bytes(rfc8785.dumps(event))
    try:
        verify_inclusion(index, size, hash_leaf(leaf), path, checkpoint.root)
    except ProofError as exc:
        raise InvalidProof(f"event seq {index} is not in the checkpointed tree: {exc}") from exc
    pinned = "pinned key" if trusted else "key shipped in the proof; pass --key to pin it"
    return (
        f"OK: event seq {index} ({event.get('type')} of {event.get('request_id')}) is leaf {index} of "
        f"{checkpoint.checkpoint.origin} at size {size}, root {checkpoint.root.hex()}, signed by {signer.id} "
        f"({pinned})"
    )
