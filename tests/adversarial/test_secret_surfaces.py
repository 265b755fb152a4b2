"""Guarantee 9 on every surface, through a real server: each credential format of the corpus
(tests/support/credentials.py), put in the resource, params, context, justification, a review comment and a
result detail, never shows in clear on the request view (GET, list), its SSE stream, the grant token, the
ledger events API, either exported bundle (API and CLI) or `keyturn show`; and what is redacted carries the
server's *keyed* digest, the same on the API view as in the ledger (issue #13 §3)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyturn.redact import REDACTED_KEY, Redactor, check_digest
from keyturn.signing_keys import load_redaction_key
from support.credentials import NEAR_MISSES, SECRETS
from support.live import LiveServer, keyturn_executable

BOT = "agent:deploy-bot"
ALICE = "user:alice@example.com"  # sre: approves db.export
ERIN = "user:erin@example.com"  # auditor


def _grant_claims(token: str) -> str:
    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()


def _ledger_events(server: LiveServer) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = -1
    with httpx.Client(base_url=server.url, headers=server.headers(ERIN), timeout=30) as http:
        while True:
            page = http.get("/v1/ledger/events", params={"after_seq": after, "limit": 1000}).json()
            items.extend(page["items"])
            if page["next_after_seq"] is None:
                return items
            after = page["next_after_seq"]


def _sse_first_state(server: LiveServer, request_id: str) -> str:
    """The first `state` event of the request's stream (the request is terminal, so the stream then ends)."""
    with (
        httpx.Client(base_url=server.url, headers=server.headers(ALICE), timeout=30) as http,
        http.stream("GET", f"/v1/actions/{request_id}/events") as response,
    ):
        assert response.status_code == 200
        data = [line for line in response.iter_lines() if line.startswith("data:")]
    assert data, "the stream sent no state"
    return "\n".join(data)


def _api_bundle(server: LiveServer) -> str:
    answer = httpx.get(f"{server.url}/v1/ledger/export", headers=server.headers(ERIN), timeout=60)
    assert answer.status_code == 200
    texts = []
    with tarfile.open(fileobj=io.BytesIO(answer.content), mode="r:gz") as archive:
        for member in archive.getmembers():
            if member.isfile():
                extracted = archive.extractfile(member)
                assert extracted is not None
                texts.append(extracted.read().decode("utf-8", errors="replace"))
    assert any('"request.submitted"' in t for t in texts)
    return "\n".join(texts)


def _cli_bundle(server: LiveServer, out: Path) -> str:
    done = subprocess.run(
        [keyturn_executable(), "ledger", "export", "--config", str(server.config_path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=server.workdir,
    )
    assert done.returncode == 0, done.stderr
    return "\n".join(p.read_text(errors="replace") for p in sorted(out.rglob("*")) if p.is_file())


def _show(server: LiveServer, request_ids: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """`keyturn show` of each request against the live server: the real command, run in-process (a process
    per request would take minutes on a loaded machine); one of them also as a real subprocess."""
    from typer.testing import CliRunner

    from keyturn import cli
    from keyturn.commands import output

    monkeypatch.setenv("KEYTURN_URL", server.url)
    monkeypatch.setenv("KEYTURN_TOKEN", server.tokens[ALICE])
    # wide: rich must not fold a value over two lines, which would hide it from the search
    monkeypatch.setattr(output.console, "width", 4000)
    runner = CliRunner()
    out = {}
    for request_id in request_ids:
        done = runner.invoke(cli.app, ["show", request_id])
        assert done.exit_code == 0, done.output
        assert request_id in done.output
        out[request_id] = done.output
    env = {**os.environ, "COLUMNS": "4000"}
    done_process = subprocess.run(
        [keyturn_executable(), "show", request_ids[0]], capture_output=True, text=True, timeout=120, env=env
    )
    assert done_process.returncode == 0, done_process.stderr
    out[request_ids[0]] += done_process.stdout
    return out


def _markers(value: Any) -> list[str]:
    if isinstance(value, dict):
        if set(value) == {REDACTED_KEY}:
            return [value[REDACTED_KEY]]
        return [m for child in value.values() for m in _markers(child)]
    if isinstance(value, list):
        return [m for child in value for m in _markers(child)]
    return []


@pytest.mark.timeout(900)
def test_no_credential_format_shows_on_any_surface(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = live_server
    ids: dict[str, str] = {}
    grants: dict[str, str] = {}
    with server.client(BOT) as bot, server.client(ALICE) as alice:
        for name, (text, _) in SECRETS.items():
            request_id = bot.submit(
                "db.export",
                text,
                {"rows": 1, "note": text, "nested": {"items": ["ok", text]}, "connection_string": text},
                justification=f"see {text}",
                context={"trace": text},
            )["id"]
            ids[name] = request_id
            alice.review(request_id, "approve", f"ok {text}")
            grants[name] = bot.get(request_id)["grant"]
            bot.consume(grants[name])
            bot.result(request_id, "failed", detail=f"psql said {text}")
        views = {name: (alice.get(rid), bot.get(rid)) for name, rid in ids.items()}
        lists = json.dumps([alice.list(limit=200), bot.list(limit=200)])
    with server.client(ERIN) as erin:
        lists += json.dumps(erin.list(limit=200))
    ledger = _ledger_events(server)
    ledger_text = json.dumps(ledger)
    bundles = _api_bundle(server) + _cli_bundle(server, tmp_path / "bundle")
    by_id = _show(server, list(ids.values()), monkeypatch)
    shown = {name: by_id[rid] for name, rid in ids.items()}
    with ThreadPoolExecutor(4) as pool:
        sse = pool.map(lambda rid: _sse_first_state(server, rid), ids.values())
        streams = dict(zip(ids, sse, strict=True))

    leaks = []
    for name, (_, secret) in SECRETS.items():
        surfaces = {
            "GET view": json.dumps(views[name]),
            "list": lists,
            "SSE": streams[name],
            "grant token": _grant_claims(grants[name]),
            "ledger events API": ledger_text,
            "bundles (API and CLI)": bundles,
            "keyturn show": shown[name],
        }
        leaks += [f"{name} on {surface}" for surface, text in surfaces.items() if secret in text]
    assert not leaks, "in clear:\n" + "\n".join(leaks)

    # Every redacted value carries the server's keyed digest, on the API view and in the ledger alike.
    key_dir = server.workdir / "data" / "redaction"
    kid = (key_dir / "current").read_text().strip()
    key = load_redaction_key(key_dir / f"{kid}.key")
    markers = [m for event in ledger for m in _markers(event["payload"])]
    markers += [m for alice_view, _ in views.values() for m in _markers(alice_view)]
    assert markers and all(m.startswith(f"hmac-sha256:{kid}:") for m in markers), markers[:3]
    for name, (text, _) in SECRETS.items():
        alice_view, _ = views[name]
        submitted = next(
            e for e in ledger if e["request_id"] == ids[name] and e["type"] == "request.submitted"
        )
        # named by the route (redact: [params.connection_string]): the value's digest, not a marker's
        in_view = alice_view["params"]["connection_string"][REDACTED_KEY]
        assert submitted["payload"]["params"]["connection_string"][REDACTED_KEY] == in_view, name
        assert check_digest(in_view, text, {kid: key}), name
        assert not Redactor().matches(in_view, text)  # without the key, no guess can be confirmed


def test_near_misses_stay_readable(live_server: LiveServer) -> None:
    """Redaction must not hide what a reviewer needs to see: look-alikes with no secret stay in clear."""
    with live_server.client(BOT) as bot, live_server.client(ALICE) as alice:
        request_id = bot.submit("db.export", "postgres://prod/customers", {"rows": 1, **NEAR_MISSES})["id"]
        view = alice.get(request_id)
    hidden = [name for name, text in NEAR_MISSES.items() if view["params"][name] != text]
    assert not hidden, f"redacted although no secret: {hidden}"


@pytest.mark.parametrize("name", ["url with user:password@", "jdbc user and password"])
def test_a_grant_binds_its_resource_without_carrying_it(live_server: LiveServer, name: str) -> None:
    text, secret = SECRETS[name]
    with live_server.client(BOT) as bot, live_server.client(ALICE) as alice:
        request_id = bot.submit("db.export", text, {"rows": 1})["id"]
        alice.review(request_id, "approve", "ok")
        token = bot.get(request_id)["grant"]
        claims = json.loads(_grant_claims(token))
        assert secret not in json.dumps(claims)
        assert "[redacted]" in claims["res"] and claims["rdg"].startswith("hmac-sha256:")
        consumed = bot.consume(token)
    assert consumed["resource"] == text  # the executor, holding a valid grant, still gets the real resource
