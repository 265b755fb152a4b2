"""A real Standard Webhooks receiver on loopback, for tests and benchmarks.

It verifies every request the way an integrator's receiver would: `v1` with the `standardwebhooks`
library (someone else's verifier, not keyturn's signer) and `v1a` with an Ed25519 public key, each over the
raw body. What it answers is set by `respond` (a function of the attempt), so a test can make it go down
(503), throttle (429 + Retry-After), redirect or be gone (410).

    receiver = WebhookReceiver(secret=SECRET, public_key=pub).start()
    receiver.url  # http://127.0.0.1:PORT/hook
    receiver.wait_for(lambda got: len(got) >= 3)
    receiver.stop()
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = "whsec_" + base64.b64encode(b"keyturn-test-webhook-secret-0123").decode()


def new_ed25519_pem() -> tuple[str, Ed25519PublicKey]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return pem, key.public_key()


@dataclass
class Received:
    id: str
    timestamp: str
    signature: str
    body: bytes
    at: float  # time.time() when it arrived
    status: int  # what the receiver answered
    v1_ok: bool
    v1a_ok: bool | None  # None: no public key to check with

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Respond = Callable[[int], tuple[int, dict[str, str]]]  # attempt number (1-based, all requests) -> answer


def always_ok(_attempt: int) -> tuple[int, dict[str, str]]:
    return 200, {}


@dataclass
class WebhookReceiver:
    secret: str | None = SECRET
    public_key: Ed25519PublicKey | None = None
    respond: Respond = always_ok
    path: str = "/hook"
    verify: bool = True  # False: a benchmark's receiver that only counts (verifying costs CPU)
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a production receiver would

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver._handle(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # a burst of concurrent deliveries must not be refused at connect

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            attempt = len(self.received) + 1
        status, extra = self.respond(attempt)
        entry = Received(
            id=headers.get("webhook-id", ""),
            timestamp=headers.get("webhook-timestamp", ""),
            signature=headers.get("webhook-signature", ""),
            body=body,
            at=time.time(),
            status=status,
            v1_ok=self.verify and self._verify_v1(body, headers),
            v1a_ok=self._verify_v1a(body, headers) if self.verify else None,
        )
        with self._changed:
            with self._lock:
                self.received.append(entry)
            self._changed.notify_all()
        handler.send_response(status)
        for key, value in extra.items():
            handler.send_header(key, value)
        handler.send_header("content-length", "0")
        handler.end_headers()

    def _verify_v1(self, body: bytes, headers: dict[str, str]) -> bool:
        if self.secret is None:
            return False
        try:
            Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True

    def _verify_v1a(self, body: bytes, headers: dict[str, str]) -> bool | None:
        if self.public_key is None:
            return None
        signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + body
        for part in headers.get("webhook-signature", "").split(" "):
            version, _, value = part.partition(",")
            if version != "v1a":
                continue
            try:
                self.public_key.verify(base64.b64decode(value), signed)
                return True
            except (InvalidSignature, ValueError):
                continue
        return False

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if 200 <= r.status < 300]

    def wait_for(self, condition: Callable[[list[Received]], bool], timeout: float = 30.0) -> list[Received]:
        """Wait until `condition(accepted deliveries)` holds; AssertionError saying what arrived if not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = self.accepted()
                if condition(got):
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"the receiver did not get what was expected in {timeout}s; got "
                        f"{[(r.status, r.json.get('type')) for r in self.received]}"
                    )
                self._changed.wait(min(remaining, 0.2))
