"""A stand-in for the Microsoft services a Teams bot talks to, on loopback, speaking their wire protocols.

    fake = FakeTeams.start(tmp_path, app_id=APP_ID, tenant_id=TENANT, secret=SECRET)
    settings = fake.teams_settings(secret_env="KT_TEAMS_SECRET")   # channels.teams for keyturn.yaml
    fake.posted / fake.updates                                      # what the bot sent, as received
    token = fake.inbound_token(service_url=fake.service_url)        # what the Bot Framework would send us
    activity = fake.invoke("approve", request_id, oid=ALICE_OID, reply_to_id=...)

Three services, each checking what it receives as the real one does:
- **Entra** (HTTPS, as MSAL insists on it; a self-signed certificate that `ca_path` trusts): the tenant's
  OpenID configuration and `oauth2/v2.0/token`, which accepts only the client-credentials grant of the bot's
  app id and secret for the Bot Framework scope, and answers a JWT signed by Entra's key.
- **Bot Connector** (`{service_url}v3/conversations/{id}/activities[/{activity id}]`): accepts a POST or PUT
  only with a bearer token Entra issued to the bot (signature, issuer, audience, app id, expiry), for a
  conversation it knows, carrying one Adaptive Card attachment that passes `check_card` (the essentials of
  Adaptive Card schema 1.5 and of Action.Execute); anything else is refused with the status Teams uses.
- **Bot Framework OpenID metadata and JWKS**: the keys keyturn must verify inbound activities with.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
BOT_SCOPE = "https://api.botframework.com/.default"

INPUT_TYPES = {"Input.Text", "Input.Number", "Input.Date", "Input.Time", "Input.Toggle", "Input.ChoiceSet"}
ELEMENT_TYPES = {
    "TextBlock",
    "RichTextBlock",
    "FactSet",
    "ActionSet",
    "Container",
    "ColumnSet",
    "Image",
    "ImageSet",
    "Table",
    *INPUT_TYPES,
}
ACTION_TYPES = {
    "Action.Execute",
    "Action.OpenUrl",
    "Action.ShowCard",
    "Action.Submit",
    "Action.ToggleVisibility",
}


def check_card(card: Any, *, nested: bool = False) -> list[str]:
    """What the Teams client would refuse or misrender in an Adaptive Card 1.5 (the schema's essentials)."""
    problems: list[str] = []
    if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
        return ["not an AdaptiveCard"]
    if not nested and card.get("version") != "1.5":
        problems.append(f"version is {card.get('version')!r}, not 1.5")
    ids: set[str] = set()

    def element(item: Any, where: str) -> None:
        if not isinstance(item, dict) or item.get("type") not in ELEMENT_TYPES:
            problems.append(f"{where}: unknown element {item!r:.80}")
            return
        kind = item["type"]
        if kind in INPUT_TYPES:
            if not item.get("id"):
                problems.append(f"{where}: an input needs an id")
            elif item["id"] in ids:
                problems.append(f"{where}: duplicate id {item['id']}")
            ids.add(item.get("id", ""))
        if kind == "TextBlock" and not isinstance(item.get("text"), str):
            problems.append(f"{where}: TextBlock without text")
        if kind == "RichTextBlock":
            for run in item.get("inlines") or []:
                if (
                    not isinstance(run, dict)
                    or run.get("type") != "TextRun"
                    or not isinstance(run.get("text"), str)
                ):
                    problems.append(f"{where}: RichTextBlock inline is not a TextRun")
        if kind == "FactSet":
            for fact in item.get("facts") or []:
                if not isinstance(fact.get("title"), str) or not isinstance(fact.get("value"), str):
                    problems.append(f"{where}: a fact needs a title and a value")
        if kind == "ActionSet":
            for i, act in enumerate(item.get("actions") or []):
                action(act, f"{where}.actions[{i}]")

    def action(item: Any, where: str) -> None:
        if not isinstance(item, dict) or item.get("type") not in ACTION_TYPES:
            problems.append(f"{where}: unknown action {item!r:.80}")
            return
        kind = item["type"]
        if kind == "Action.Execute" and not item.get("verb"):
            problems.append(f"{where}: Action.Execute without a verb")
        if kind == "Action.OpenUrl" and not str(item.get("url", "")).startswith(("https://", "http://")):
            problems.append(f"{where}: Action.OpenUrl without a URL")
        if kind == "Action.ShowCard":
            problems.extend(f"{where}.card: {p}" for p in check_card(item.get("card"), nested=True))

    for i, item in enumerate(card.get("body") or []):
        element(item, f"body[{i}]")
    for i, item in enumerate(card.get("actions") or []):
        action(item, f"actions[{i}]")
    refresh = card.get("refresh")
    if refresh is not None and (
        not isinstance(refresh, dict) or (refresh.get("action") or {}).get("type") != "Action.Execute"
    ):
        problems.append("refresh.action must be an Action.Execute")
    if len(json.dumps(card)) > 28_000:
        problems.append("the card is larger than Teams accepts (28 KB)")
    return problems


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**public, "kid": kid, "use": "sig", "alg": "RS256", "endorsements": ["msteams"]}


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    key = _rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-entra.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "fake-entra.crt", workdir / "fake-entra.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass
class Sent:
    method: str  # "POST" (new activity) or "PUT" (update)
    conversation_id: str
    activity_id: str
    activity: dict[str, Any]

    @property
    def card(self) -> dict[str, Any]:
        content: dict[str, Any] = self.activity["attachments"][0]["content"]
        return content


@dataclass
class FakeTeams:
    app_id: str
    tenant_id: str
    secret: str
    workdir: Path
    conversations: set[str] = field(default_factory=lambda: {"19:oncall@thread.tacv2"})
    entra_key: rsa.RSAPrivateKey = field(default_factory=_rsa_key)
    bf_key: rsa.RSAPrivateKey = field(default_factory=_rsa_key)
    posted: list[Sent] = field(default_factory=list)
    updates: list[Sent] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (status, why) of every refused call
    token_requests: int = 0
    fail_next: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (status, headers) to answer
    activities: dict[str, dict[str, Any]] = field(default_factory=dict)
    entra_url: str = ""
    bf_url: str = ""
    ca_path: Path | None = None
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, *, app_id: str, tenant_id: str, secret: str) -> FakeTeams:
        fake = cls(app_id=app_id, tenant_id=tenant_id, secret=secret, workdir=workdir)
        cert_path, key_path = _self_signed(workdir)
        fake.ca_path = cert_path
        entra = fake._serve()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        entra.socket = context.wrap_socket(entra.socket, server_side=True)
        fake.entra_url = f"https://127.0.0.1:{entra.server_address[1]}"
        bot_framework = fake._serve()
        fake.bf_url = f"http://127.0.0.1:{bot_framework.server_address[1]}"
        for server in fake._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return fake

    def _serve(self) -> ThreadingHTTPServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._get(self)

            def do_POST(self) -> None:
                fake._write(self, "POST")

            def do_PUT(self) -> None:
                fake._write(self, "PUT")

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._servers.append(server)
        return server

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def service_url(self) -> str:
        return f"{self.bf_url}/teams/"

    @property
    def metadata_url(self) -> str:
        return f"{self.bf_url}/v1/.well-known/openidconfiguration"

    def teams_settings(self, *, secret_env: str) -> dict[str, Any]:
        """`channels.teams` of keyturn.yaml pointing at this fake."""
        return {
            "app_id": self.app_id,
            "tenant_id": self.tenant_id,
            "app_secret": {"env": secret_env},
            "login_url": self.entra_url,
            "openid_metadata_url": self.metadata_url,
            "conversations": {
                "oncall": {"conversation_id": "19:oncall@thread.tacv2", "service_url": self.service_url}
            },
        }

    # --- inbound: what the Bot Framework sends the bot -------------------------------------------

    def inbound_token(
        self,
        *,
        service_url: str | None = None,
        audience: str | None = None,
        issuer: str = BOT_FRAMEWORK_ISSUER,
        expires_in: float = 3600,
        key: rsa.RSAPrivateKey | None = None,
        kid: str = "bf-key",
        drop: tuple[str, ...] = (),
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience or self.app_id,
            "serviceurl": service_url or self.service_url,
            "nbf": now - 10,
            "iat": now - 10,
            "exp": now + int(expires_in),
        }
        for name in drop:
            claims.pop(name, None)
        return jwt.encode(claims, key or self.bf_key, algorithm="RS256", headers={"kid": kid})

    def invoke(
        self,
        verb: str,
        request_id: str,
        *,
        oid: str | None,
        reply_to_id: str | None = None,
        inputs: dict[str, Any] | None = None,
        tenant_id: str | None = None,
        service_url: str | None = None,
        activity_id: str | None = None,
    ) -> dict[str, Any]:
        """An `adaptiveCard/action` invoke as Teams sends it when someone clicks an Action.Execute."""
        tenant = tenant_id or self.tenant_id
        sender: dict[str, Any] = {"id": f"29:{uuid.uuid4()}", "name": "Someone"}
        if oid is not None:
            sender["aadObjectId"] = oid
        return {
            "type": "invoke",
            "name": "adaptiveCard/action",
            "id": activity_id or f"f:{secrets.token_hex(8)}",
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            "serviceUrl": service_url or self.service_url,
            "channelId": "msteams",
            "from": sender,
            "recipient": {"id": f"28:{self.app_id}", "name": "keyturn"},
            "conversation": {
                "id": "19:oncall@thread.tacv2",
                "conversationType": "channel",
                "tenantId": tenant,
                "isGroup": True,
            },
            "replyToId": reply_to_id,
            "channelData": {"tenant": {"id": tenant}, "source": {"name": "message"}},
            "value": {
                "action": {
                    "type": "Action.Execute",
                    "verb": verb,
                    "data": {"request_id": request_id, **(inputs or {})},
                },
                "trigger": "manual",
            },
        }

    # --- HTTP ------------------------------------------------------------------------------------

    def _answer(
        self, handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlparse(handler.path).path
        if path == f"/{self.tenant_id}/v2.0/.well-known/openid-configuration":
            base = f"{self.entra_url}/{self.tenant_id}"
            return self._answer(
                handler,
                200,
                {
                    "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "jwks_uri": f"{base}/discovery/v2.0/keys",
                },
            )
        if path == "/v1/.well-known/openidconfiguration":
            return self._answer(
                handler,
                200,
                {
                    "issuer": BOT_FRAMEWORK_ISSUER,
                    "jwks_uri": f"{self.bf_url}/v1/.well-known/keys",
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
            )
        if path == "/v1/.well-known/keys":
            return self._answer(handler, 200, {"keys": [_jwk(self.bf_key, "bf-key")]})
        self._answer(handler, 404, {"error": "not found"})

    def _write(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        path = urlparse(handler.path).path
        if method == "POST" and path == f"/{self.tenant_id}/oauth2/v2.0/token":
            return self._token(handler, raw)
        if path.startswith("/teams/v3/conversations/"):
            return self._connector(handler, method, path, raw)
        self._answer(handler, 404, {"error": "not found"})

    def _token(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        with self._lock:
            self.token_requests += 1
        if form.get("grant_type") != "client_credentials":
            return self._answer(handler, 400, {"error": "unsupported_grant_type"})
        basic = handler.headers.get("Authorization", "")
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if basic.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        if client_id != self.app_id or not secrets.compare_digest(client_secret or "", self.secret):
            return self._answer(
                handler,
                401,
                {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret"},
            )
        if BOT_SCOPE not in (form.get("scope") or "").split():
            return self._answer(handler, 400, {"error": "invalid_scope"})
        now = int(time.time())
        token = jwt.encode(
            {
                "iss": f"https://sts.windows.net/{self.tenant_id}/",
                "aud": "https://api.botframework.com",
                "appid": self.app_id,
                "tid": self.tenant_id,
                "iat": now,
                "nbf": now,
                "exp": now + 3600,
            },
            self.entra_key,
            algorithm="RS256",
            headers={"kid": "entra-key"},
        )
        self._answer(
            handler,
            200,
            {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": token},
        )

    def _refuse(self, handler: BaseHTTPRequestHandler, status: int, why: str) -> None:
        with self._lock:
            self.refused.append((status, why))
        self._answer(
            handler,
            status,
            {"error": {"code": "BadArgument" if status == 400 else "Unauthorized", "message": why}},
        )

    def _connector(self, handler: BaseHTTPRequestHandler, method: str, path: str, raw: bytes) -> None:
        auth = handler.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return self._refuse(handler, 401, "no bearer token")
        try:
            claims = jwt.decode(
                auth[7:],
                self.entra_key.public_key(),
                algorithms=["RS256"],
                audience="https://api.botframework.com",
                issuer=f"https://sts.windows.net/{self.tenant_id}/",
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            return self._refuse(handler, 401, f"bad token: {exc}")
        if claims.get("appid") != self.app_id:
            return self._refuse(handler, 401, "token of another app")
        with self._lock:
            if self.fail_next:
                status, headers = self.fail_next.pop(0)
                return self._answer(handler, status, {"error": {"code": "Throttled"}}, headers)
        parts = path.removeprefix("/teams/v3/conversations/").split("/")
        conversation_id = parts[0]
        if conversation_id not in self.conversations:
            return self._refuse(handler, 404, f"conversation {conversation_id} not found")
        try:
            activity = json.loads(raw)
        except ValueError:
            return self._refuse(handler, 400, "body is not JSON")
        if activity.get("type") != "message":
            return self._refuse(handler, 400, "activity type is not message")
        attachments = activity.get("attachments") or []
        if (
            len(attachments) != 1
            or attachments[0].get("contentType") != "application/vnd.microsoft.card.adaptive"
        ):
            return self._refuse(handler, 400, "expected one Adaptive Card attachment")
        problems = check_card(attachments[0].get("content"))
        if problems:
            return self._refuse(handler, 400, "; ".join(problems))
        with self._lock:
            if method == "POST" and len(parts) == 2 and parts[1] == "activities":
                activity_id = f"1:{secrets.token_hex(8)}"
                self.activities[activity_id] = activity
                self.posted.append(Sent("POST", conversation_id, activity_id, activity))
            elif method == "PUT" and len(parts) == 3 and parts[1] == "activities":
                activity_id = parts[2]
                if activity_id not in self.activities:
                    return self._refuse(handler, 404, f"activity {activity_id} not found")
                self.activities[activity_id] = activity
                self.updates.append(Sent("PUT", conversation_id, activity_id, activity))
            else:
                return self._refuse(handler, 405, f"{method} {path}")
        self._answer(handler, 201 if method == "POST" else 200, {"id": activity_id})


@contextmanager
def fake_teams(workdir: Path, *, app_id: str, tenant_id: str, secret: str) -> Iterator[FakeTeams]:
    fake = FakeTeams.start(workdir, app_id=app_id, tenant_id=tenant_id, secret=secret)
    try:
        yield fake
    finally:
        fake.stop()


# --- a keyturn server wired to the fake (tests/integration, tests/adversarial) ---------------------------

APP_ID = "6b7c1a52-8f0e-4d8e-9c1a-0f5b2e1d7a31"
TENANT_ID = "0b0f6c8e-1a2b-4c3d-8e9f-a1b2c3d4e5f6"
OTHER_TENANT_ID = "9f9f9f9f-0000-4000-8000-000000000000"
SECRET = "bot-secret-" + "x" * 24
SECRET_ENV = "KT_TEST_TEAMS_SECRET"

ALICE_OID = "a11ce000-0000-4000-8000-000000000001"
BOB_OID = "b0b00000-0000-4000-8000-000000000002"
CAROL_OID = "ca201000-0000-4000-8000-000000000003"
OLIVIA_OID = "011b1a00-0000-4000-8000-000000000004"
STRANGER_OID = "57a75e00-0000-4000-8000-000000000005"  # a Teams account no keyturn user is linked to

TEAMS_USERS: dict[str, dict[str, Any]] = {
    "user:alice@example.com": {"groups": ["sre"], "entra_oid": ALICE_OID},
    "user:bob@example.com": {"groups": ["sre"], "entra_oid": BOB_OID},
    "user:carol@example.com": {"groups": ["security"], "entra_oid": CAROL_OID},
    "user:olivia@example.com": {"groups": ["sre"], "entra_oid": OLIVIA_OID},
}

TEAMS_POLICY = """\
version: 1
defaults:
  decision: review
  approvers: [security]
  ttl: 1h
tiers:
  fresh-login:
    quorum: 1
    approvers: [sre]
    step_up: true
rules:
  - name: exports need an sre
    match: {action: db.export}
    decision: review
    quorum: 1
    approvers: [sre]
    redact: [params.connection_string]
    notify: ["teams:oncall"]
  - name: two sres for deletes
    match: {action: k8s.delete}
    decision: review
    quorum: 2
    approvers: [sre]
    notify: ["teams:oncall"]
  - name: rotations need a fresh login
    match: {action: secrets.rotate}
    decision: review
    tier: fresh-login
    notify: ["teams:oncall"]
"""


def teams_environment(fake: FakeTeams, monkeypatch: Any) -> None:
    """What a keyturn process (this one or `keyturn serve`) needs to talk to the fake: the bot's secret, and
    trust in the fake Entra's certificate (MSAL, through requests)."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_path))
