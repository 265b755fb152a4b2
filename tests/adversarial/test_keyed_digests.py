"""Keyed redaction digests (guarantee 9, issue #13 §3) through a real server and the real CLI: someone holding
only the ledger cannot confirm a guess of a low-entropy secret; the bundle still verifies without the key; an
auditor given the key can check a value, also after a rotation; a tampered or downgraded digest is caught."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from keyturn.cli import app
from keyturn.model import canonical_json
from keyturn.redact import REDACTED_KEY
from support.live import DEFAULT_POLICY, LiveServer

POLICY = DEFAULT_POLICY.replace(
    "redact: [params.connection_string]", "redact: [params.connection_string, params.pin]"
)
BOT = "agent:deploy-bot"
ALICE = "user:alice@example.com"
PIN = "4821"
runner = CliRunner()


def _cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


def _export(server: LiveServer, out: Path) -> list[dict[str, Any]]:
    done = _cli("ledger", "export", "--config", str(server.config_path), "--out", str(out))
    assert done.exit_code == 0, done.output
    return [json.loads(line)["event"] for line in (out / "events.jsonl").read_text().splitlines()]


def _submitted(events: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    return next(
        e for e in events if e.get("request_id") == request_id and e.get("type") == "request.submitted"
    )


def _key_file(server: LiveServer, kid: str) -> str:
    """The key file an admin hands the auditor: exported from the server's key ring (a file in data_dir
    on SQLite, a sealed row on PostgreSQL)."""
    out = server.workdir / f"redaction-{kid}.key"
    if not out.exists():
        done = _cli(
            "ledger", "export-redaction-key", kid, "--out", str(out), "--config", str(server.config_path)
        )
        assert done.exit_code == 0, done.output
    return str(out)


def test_keyed_digests_from_ledger_to_auditor(live_servers: Any, tmp_path: Path, database_url: str) -> None:
    """On SQLite and PostgreSQL: the digest is made before the store sees the event."""
    server: LiveServer = live_servers(policy=POLICY, database_url=database_url)
    with server.client(BOT) as bot:
        first = bot.submit("db.export", "postgres://prod/customers", {"rows": 1, "pin": PIN})["id"]
    events = _export(server, tmp_path / "bundle")
    seq = _submitted(events, first)["seq"]
    digest = _submitted(events, first)["payload"]["params"]["pin"][REDACTED_KEY]
    kid = digest.split(":")[1]
    assert digest.startswith(f"hmac-sha256:{kid}:")

    # holding only the ledger: hashing all 10,000 PINs confirms none of them
    for pin in range(10_000):
        candidate = canonical_json(f"{pin:04d}")
        assert hashlib.sha256(candidate).hexdigest() not in digest

    # the bundle verifies without the key
    assert _cli("ledger", "verify", "--bundle", str(tmp_path / "bundle")).exit_code == 0

    # an auditor given the key checks a value
    bundle = str(tmp_path / "bundle")
    key = _key_file(server, kid)
    match = _cli("ledger", "check-value", str(seq), "params.pin", PIN, "--key-file", key, "--bundle", bundle)
    assert match.exit_code == 0 and "match" in match.output, match.output
    wrong = _cli(
        "ledger", "check-value", str(seq), "params.pin", "4822", "--key-file", key, "--bundle", bundle
    )
    assert wrong.exit_code == 1 and "no match" in wrong.output
    on_db = _cli(
        "ledger",
        "check-value",
        str(seq),
        "params.pin",
        PIN,
        "--key-file",
        key,
        "--database",
        server.database_url,
    )
    assert on_db.exit_code == 0, on_db.output
    not_redacted = _cli(
        "ledger", "check-value", str(seq), "params.rows", "1", "--key-file", key, "--bundle", bundle
    )
    assert not_redacted.exit_code == 2 and "not redacted" in not_redacted.output

    # rotation: new events use the new key, old ones stay checkable with the old key file
    rotated = _cli("ledger", "rotate-redaction-key", "--config", str(server.config_path))
    assert rotated.exit_code == 0, rotated.output
    # A replica on the database key ring picks a rotation up within its refresh interval (5 s);
    # one on a data_dir at its next request.
    deadline = time.monotonic() + 20
    with server.client(BOT) as bot, server.client(ALICE) as alice:
        while True:
            second = bot.submit("db.export", "postgres://prod/customers", {"rows": 2, "pin": PIN})["id"]
            shown = alice.get(second)["params"]["pin"][REDACTED_KEY]
            if kid not in shown or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    events = _export(server, tmp_path / "bundle2")
    new_digest = _submitted(events, second)["payload"]["params"]["pin"][REDACTED_KEY]
    new_kid = new_digest.split(":")[1]
    assert new_kid != kid and shown == new_digest  # the API view and the ledger agree after a rotation too
    bundle2 = str(tmp_path / "bundle2")
    new_key = _key_file(server, new_kid)
    old_with_new_key = _cli(
        "ledger", "check-value", str(seq), "params.pin", PIN, "--key-file", new_key, "--bundle", bundle2
    )
    assert old_with_new_key.exit_code == 2 and kid in old_with_new_key.output  # names the key it needs
    both = ["--key-file", new_key, "--key-file", key, "--bundle", bundle2]
    assert _cli("ledger", "check-value", str(seq), "params.pin", PIN, *both).exit_code == 0
    new_seq = str(_submitted(events, second)["seq"])
    assert _cli("ledger", "check-value", new_seq, "params.pin", PIN, *both).exit_code == 0


def test_a_tampered_or_downgraded_digest_is_caught(live_servers: Any, tmp_path: Path) -> None:
    server: LiveServer = live_servers(policy=POLICY)
    with server.client(BOT) as bot:
        request_id = bot.submit("db.export", "postgres://prod/customers", {"rows": 1, "pin": PIN})["id"]
    events = _export(server, tmp_path / "bundle")
    assert _cli("ledger", "verify", "--bundle", str(tmp_path / "bundle")).exit_code == 0
    submitted = _submitted(events, request_id)
    digest = submitted["payload"]["params"]["pin"][REDACTED_KEY]
    plain = "sha256:" + hashlib.sha256(canonical_json("0000")).hexdigest()
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    for forged in (flipped, plain):  # an edited digest; one swapped for a guessable plain SHA-256
        copy = tmp_path / f"forged-{forged[:6]}"
        shutil.copytree(tmp_path / "bundle", copy)
        path = copy / "events.jsonl"
        path.write_text(path.read_text().replace(digest, forged))
        result = _cli("ledger", "verify", "--bundle", str(copy))
        assert result.exit_code != 0, result.output
        assert f"seq {submitted['seq']}" in result.output or str(submitted["seq"]) in result.output


def test_params_digests_in_the_ledger_are_keyed_too(live_servers: Any, tmp_path: Path) -> None:
    """The ledger shows the params with the PIN redacted; a plain SHA-256 of the whole params document
    (submitted, edited, reviewed, approved, grant issued and consumed, the passkey statement) would let a
    ledger holder try all 10,000 PINs against it. Every params digest the ledger carries is keyed; the
    auditor with the key checks the whole document."""
    server: LiveServer = live_servers(policy=POLICY)
    params = {"rows": 50_000, "pin": PIN}  # big enough to need a review: approved, issued, consumed too
    with server.client(BOT) as bot, server.client(ALICE) as alice:
        request_id = bot.submit("db.export", "postgres://prod/customers", params)["id"]
        alice.review(request_id, "approve", comment="ok")
        grant = bot.get(request_id)["grant"]
        bot.consume(grant)
    events = [e for e in _export(server, tmp_path / "bundle") if e.get("request_id") == request_id]
    digests = {e["type"]: e["payload"]["params_digest"] for e in events if e["payload"].get("params_digest")}
    assert {
        "request.submitted",
        "request.reviewed",
        "request.approved",
        "grant.issued",
        "grant.consumed",
    } <= set(digests), digests
    leaked = json.dumps(events)
    for pin in range(10_000):
        guess = hashlib.sha256(canonical_json({"rows": 50_000, "pin": f"{pin:04d}"})).hexdigest()
        assert guess not in leaked, f"a plain digest of the params confirms the PIN {pin:04d}"
    kid = digests["request.submitted"].split(":")[1]
    assert all(d.startswith(f"hmac-sha256:{kid}:") for d in digests.values())
    assert len(set(digests.values())) == 1  # one document, one digest: the report's cross-checks hold

    seq = str(next(e["seq"] for e in events if e["type"] == "request.approved"))
    key = _key_file(server, kid)
    bundle = str(tmp_path / "bundle")
    check = ["--json", "--key-file", key, "--bundle", bundle]
    assert _cli("ledger", "check-value", seq, "params_digest", json.dumps(params), *check).exit_code == 0
    other = json.dumps({"rows": 50_000, "pin": "0000"})
    assert _cli("ledger", "check-value", seq, "params_digest", other, *check).exit_code == 1
    assert _cli("ledger", "verify", "--bundle", bundle).exit_code == 0
