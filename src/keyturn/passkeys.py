"""Passkey-signed reviews (DESIGN §3 "Step-up and signed reviews"): the statement, the challenge, the check.

A passkey review signs the decision itself. The WebAuthn challenge is 32 random bytes followed by the
SHA-256 of the canonical statement (RFC 8785)

    {request_id, action, resource, params_digest, decision, reviewer}

so the authenticator's signature (over authenticator data ‖ SHA-256(client data), the client data holding
the challenge) proves that this passkey approved exactly these params. The ledger keeps the public key and
the assertion (`PasskeyAssertion`), and `verify_assertion` checks one offline from them alone: no server,
no database, no clock. Pure functions, no I/O: the workflow and `keyturn ledger verify` both use them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

from keyturn.model import PasskeyAssertion, canonical_json

RANDOM_BYTES = 32


def statement(
    *, request_id: str, action: str, resource: str, params_digest: str | None, decision: str, reviewer: str
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "action": action,
        "resource": resource,
        "params_digest": params_digest,
        "decision": decision,
        "reviewer": reviewer,
    }


def statement_digest(document: dict[str, Any]) -> bytes:
    return hashlib.sha256(canonical_json(document)).digest()


def new_challenge(document: dict[str, Any]) -> bytes:
    return secrets.token_bytes(RANDOM_BYTES) + statement_digest(document)


def signed_challenge(assertion: PasskeyAssertion) -> bytes:
    """The challenge the authenticator signed, read from the client data (ValueError if unreadable)."""
    try:
        client_data = json.loads(bytes.fromhex(assertion.client_data_json))
        challenge = from_b64(client_data["challenge"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the client data cannot be read: {exc}") from None
    if not isinstance(challenge, bytes):
        raise ValueError("the client data has no challenge")
    return challenge


def binds(assertion: PasskeyAssertion, document: dict[str, Any]) -> bool:
    """Whether the assertion's challenge commits to exactly this statement."""
    try:
        challenge = signed_challenge(assertion)
    except ValueError:
        return False
    return len(challenge) == RANDOM_BYTES + 32 and challenge[RANDOM_BYTES:] == statement_digest(document)


def verify_assertion(
    assertion: PasskeyAssertion, document: dict[str, Any], *, sign_count: int = 0
) -> tuple[str | None, int]:
    """Check a passkey review offline: (None, new sign count) when it proves `document`, else (why, 0).

    The signature is checked with the public key kept beside it; user verification must be set; the
    origin and RP id must be the ones recorded (they are inside the signed client data / RP id hash).
    """
    # py_webauthn (and the ASN.1 modules under it) loads on the first check, not with every server.
    from webauthn import verify_authentication_response
    from webauthn.helpers.exceptions import InvalidAuthenticationResponse

    if not binds(assertion, document):
        return "the passkey signed a different statement (request, params, decision or reviewer differ)", 0
    try:
        key_id = b64(bytes.fromhex(assertion.key_id))
        credential = {
            "id": key_id,
            "rawId": key_id,
            "type": "public-key",
            "response": {
                "authenticatorData": b64(bytes.fromhex(assertion.authenticator_data)),
                "clientDataJSON": b64(bytes.fromhex(assertion.client_data_json)),
                "signature": b64(bytes.fromhex(assertion.signature)),
            },
        }
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=signed_challenge(assertion),
            expected_rp_id=assertion.rp_id,
            expected_origin=assertion.origin,
            credential_public_key=bytes.fromhex(assertion.public_key),
            credential_current_sign_count=sign_count,
            require_user_verification=True,
        )
    except (InvalidAuthenticationResponse, ValueError, KeyError, TypeError) as exc:
        return f"the passkey signature does not verify: {exc}", 0
    return None, verified.new_sign_count


def b64(data: bytes) -> str:
    """Base64url without padding, as WebAuthn writes it (py_webauthn's `bytes_to_base64url`)."""
    return base64.urlsafe_b64encode(data).decode("ascii").replace("=", "")


def from_b64(value: str) -> bytes:
    """Base64url with or without padding (py_webauthn's `base64url_to_bytes`: extra padding is ignored)."""
    return base64.urlsafe_b64decode(f"{value}===")


def hex_of(base64url: str) -> str:
    """A browser's base64url value as the lowercase hex the ledger keeps (ValueError if malformed)."""
    return from_b64(base64url).hex()


def recorded_problem(event: dict[str, Any]) -> str | None:
    """Why the passkey signature recorded in a `request.reviewed` ledger event does not prove it (None: it
    does). Checked from the event alone: the statement must be the event's own review, and be signed."""
    payload = event.get("payload")
    section = payload.get("passkey") if isinstance(payload, dict) else None
    if not isinstance(section, dict):
        return "the passkey section is missing or not an object"
    document = section.get("statement")
    if not isinstance(document, dict):
        return "the passkey section has no statement"
    expected = {
        "request_id": event.get("request_id"),
        "reviewer": payload.get("reviewer") if isinstance(payload, dict) else None,
        "decision": payload.get("decision") if isinstance(payload, dict) else None,
        "params_digest": payload.get("params_digest") if isinstance(payload, dict) else None,
    }
    for key, value in expected.items():
        if document.get(key) != value:
            return f"the signed statement's {key} ({document.get(key)!r}) is not this review's ({value!r})"
    try:
        assertion = PasskeyAssertion.model_validate({k: v for k, v in section.items() if k != "statement"})
    except ValueError as exc:
        return f"the recorded assertion is malformed: {exc.__class__.__name__}"
    problem, _ = verify_assertion(assertion, document)
    return problem
