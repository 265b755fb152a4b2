"""The ledger API through a real server over HTTP: auditors only; proofs and the exported bundle verify with
nothing but the public key, in another process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyturn.ledger.prove import check_inclusion_document

AUDITOR = "user:erin@example.com"
ALICE = "user:alice@example.com"
AGENT = "agent:deploy-bot"


@pytest.fixture
def server(live_servers: Any) -> Any:
    # a checkpoint every 4 events, so the few requests below are covered without waiting for the interval
    return live_servers(settings={"ledger": {"checkpoint_every": 4, "checkpoint_interval": 1}})


def make_history(server: Any) -> str:
    with server.client(AGENT) as agent, server.client(ALICE) as alice:
        pending = agent.submit("db.export", "postgres://prod/customers", {"rows": 10})
        alice.review(pending["id"], "approve", "fine")
        agent.submit("test.allow", "x", {})
        agent.submit("test.deny", "x", {})
    return str(pending["id"])


def wait_for_checkpoint(server: Any, covering: int) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = httpx.get(f"{server.url}/v1/ledger/checkpoints", headers=server.headers(AUDITOR)).json()
        if body["items"] and body["items"][-1]["size"] >= covering:
            return dict(body)
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint covering {covering} events was signed")


@pytest.mark.parametrize("who", [ALICE, AGENT, "user:frank@example.com"])
def test_only_auditors_read_the_ledger(server: Any, who: str) -> None:
    for path in ("events", "checkpoints", "export", "proof/inclusion?seq=0", "proof/consistency?from=0&to=0"):
        answer = httpx.get(f"{server.url}/v1/ledger/{path}", headers=server.headers(who))
        assert answer.status_code == 403, (path, answer.text)  # admin (frank) is not auditor either
    assert httpx.get(f"{server.url}/v1/ledger/events").status_code == 401


def test_events_proofs_and_bundle_verify_offline(server: Any, tmp_path: Path) -> None:
    request_id = make_history(server)
    as_auditor = server.headers(AUDITOR)
    events = httpx.get(f"{server.url}/v1/ledger/events", headers=as_auditor).json()["items"]
    assert [e["seq"] for e in events] == list(range(len(events)))
    mine = httpx.get(
        f"{server.url}/v1/ledger/events", params={"request_id": request_id}, headers=as_auditor
    ).json()["items"]
    assert [e["type"] for e in mine][:2] == ["request.submitted", "request.pending"]
    assert {e["request_id"] for e in mine} == {request_id}

    checkpoints = wait_for_checkpoint(server, len(events))
    verifier_key = checkpoints["keys"][0]["verifier_key"]
    from keyturn.ledger.note import VerifierKey

    # One approval shown to an auditor without the rest of the log, checked with the public key alone.
    approved_seq = next(e["seq"] for e in mine if e["type"] == "request.approved")
    proof = httpx.get(
        f"{server.url}/v1/ledger/proof/inclusion", params={"seq": approved_seq}, headers=as_auditor
    ).json()
    assert proof["event"]["type"] == "request.approved"
    assert "request.approved" in check_inclusion_document(proof, [VerifierKey.parse(verifier_key)])
    forged = {**proof, "event": {**proof["event"], "actor": "user:mallory@example.com"}}
    with pytest.raises(ValueError):
        check_inclusion_document(forged, [VerifierKey.parse(verifier_key)])

    # The exported bundle verifies in a separate process with no server, database or configuration.
    archive = httpx.get(f"{server.url}/v1/ledger/export", headers=as_auditor)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    bundle = tmp_path / "ledger-bundle"
    done = subprocess.run(
        [sys.executable, "-m", "keyturn.ledger", "verify", "--bundle", str(bundle), "--key", verifier_key],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("OK:"), done.stdout + done.stderr

    # Tampering with one payload byte in the bundle is detected and the event named.
    lines = (bundle / "events.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["event"]["type"] == "request.pending"
    lines[1] = lines[1].replace("request.pending", "request.pendinG")  # the exact leaf bytes are inline
    (bundle / "events.jsonl").write_text("\n".join(lines) + "\n")
    tampered = subprocess.run(
        [sys.executable, "-m", "keyturn.ledger", "verify", "--bundle", str(bundle), "--key", verifier_key],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tampered.returncode == 1 and "seq 1" in tampered.stdout + tampered.stderr
