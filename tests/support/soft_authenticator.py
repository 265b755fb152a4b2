"""A software WebAuthn authenticator (P-256, as a platform authenticator signs) that makes real assertions,
for tests of passkey-signed reviews without a browser."""

from __future__ import annotations

import hashlib
import json
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import bytes_to_base64url, encode_cbor

from keyturn.model import PasskeyAssertion

RP_ID = "localhost"
ORIGIN = "http://localhost:8300"
UP, UV = 0x01, 0x04


class SoftAuthenticator:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.key_id = secrets.token_bytes(16)
        self.count = 0
        numbers = self.key.public_key().public_numbers()
        self.cose = encode_cbor(
            {1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}
        )

    def assert_(self, challenge: bytes, *, flags: int = UP | UV, origin: str = ORIGIN) -> PasskeyAssertion:
        self.count += 1
        auth_data = hashlib.sha256(RP_ID.encode()).digest() + bytes([flags]) + self.count.to_bytes(4, "big")
        client_data = json.dumps(
            {"type": "webauthn.get", "challenge": bytes_to_base64url(challenge), "origin": origin}
        ).encode()
        signature = self.key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return PasskeyAssertion(
            key_id=self.key_id.hex(),
            public_key=self.cose.hex(),
            rp_id=RP_ID,
            origin=ORIGIN,
            authenticator_data=auth_data.hex(),
            client_data_json=client_data.hex(),
            signature=signature.hex(),
        )
