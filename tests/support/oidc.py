"""A real identity provider on 127.0.0.1 for tests: OpenID discovery document and JWK set over HTTP.

It speaks the real wire protocol (a small `http.server`); tokens are signed with `cryptography` keys through
PyJWT, exactly as an IdP would. `IdentityProvider.token(key, **claims)` mints an ID token for alice by
default; any claim can be overridden or dropped (`None`).

    with running_provider() as idp:
        token = idp.token(idp.keys[0], email="bob@example.com", groups=["sre"])
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "keyturn"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@dataclass
class SigningKeyPair:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        data: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}


def default_keys() -> list[SigningKeyPair]:
    return [SigningKeyPair("rsa-1", "RS256", RSA_KEY), SigningKeyPair("ec-1", "ES256", EC_KEY)]


@dataclass
class IdentityProvider:
    """What the provider serves; tests change `keys` to rotate and read `hits` to count downloads."""

    url: str = ""
    keys: list[SigningKeyPair] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)
    discovery_issuer: str | None = None
    down: bool = False

    def token(self, key: SigningKeyPair | None = None, **overrides: Any) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "00u1abc",
            "email": "alice@example.com",
            "email_verified": True,
            "name": "Alice Example",
            "groups": ["sre", "oncall"],
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})

    def reset(self) -> None:
        self.keys = default_keys()
        self.hits.clear()
        self.discovery_issuer = None
        self.down = False


@contextmanager
def running_provider() -> Iterator[IdentityProvider]:
    state = IdentityProvider(keys=default_keys())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits[self.path] = state.hits.get(self.path, 0) + 1
            if state.down:
                self.send_error(503)
                return
            if self.path == "/.well-known/openid-configuration":
                body = {"issuer": state.discovery_issuer or state.url, "jwks_uri": f"{state.url}/keys"}
            elif self.path == "/keys":
                body = {"keys": [k.jwk() for k in state.keys]}
            else:
                self.send_error(404)
                return
            payload = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
