"""Passkeys through Chromium's DevTools virtual authenticator: register, sign an approval over the decision,
a failed user verification refused, revoke."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from support.console import ConsoleWorld, register_passkey, virtual_authenticator
from support.live import keyturn_executable


def keyturn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([keyturn_executable(), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def world(console_world_factory: Any) -> ConsoleWorld:
    made: ConsoleWorld = console_world_factory(localhost=True)
    return made


def test_a_passkey_signed_approval_is_recorded_with_its_signature(world: ConsoleWorld) -> None:
    page = world.page()
    world.login(page, "alice")
    virtual_authenticator(page)
    register_passkey(world, page)

    created = world.server.client("agent:deploy-bot").submit("db.export", params={"rows": 5000})
    page.goto(f"{world.base}/console/requests/{created['id']}")
    page.fill("input[name='edit:params.rows']", "10")
    page.fill("#comment", "signed")
    page.click("#approve-passkey")
    page.wait_for_selector("#decided")
    assert page.locator("#status").inner_text() == "approved"

    events = world.server.client("user:erin@example.com").get(created["id"])  # erin is an auditor
    reviewed = [e for e in events["history"] if e["type"] == "request.reviewed"]
    assert len(reviewed) == 1
    signed = reviewed[0]["payload"]["passkey"]
    assert signed["origin"] == world.base and signed["rp_id"] == "localhost"
    assert signed["signature"] and signed["public_key"] and signed["authenticator_data"]

    page.goto(world.base + "/console/passkeys")
    assert page.locator("td[data-label=Signatures]").inner_text() != "0"

    # The agent runs it; then the ledger, exported, proves the signature offline from the bundle alone.
    agent = world.server.client("agent:deploy-bot")
    consumed = agent.consume(agent.get(created["id"])["grant"])
    assert consumed["params"]["rows"] == 10
    agent.result(created["id"], "succeeded")
    world.server.stop()  # a clean stop signs the final checkpoint
    bundle = world.server.workdir / "bundle"
    config = str(world.server.config_path)
    exported = keyturn("ledger", "export", "--config", config, "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    verified = keyturn("ledger", "verify", "--bundle", str(bundle))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "1 passkey signature verified" in verified.stdout
    report = world.server.workdir / "report.html"
    made = keyturn("ledger", "report", "--config", config, "--out", str(report))
    assert made.returncode == 0, made.stdout + made.stderr
    assert "signed with passkey" in report.read_text()

    # Tamper with the assertion (one character of the signature): verify names that review's signature.
    events = bundle / "events.jsonl"
    lines = events.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if '"request.reviewed"' in line and '"passkey":' in line)
    record = json.loads(lines[at])
    signature = record["event"]["payload"]["passkey"]["signature"]
    record["event"]["payload"]["passkey"]["signature"] = ("a" if signature[5] != "a" else "b").join(
        (signature[:5], signature[6:])
    )
    lines[at] = json.dumps(record, separators=(",", ":"))
    events.write_text("\n".join(lines) + "\n")
    tampered = keyturn("ledger", "verify", "--bundle", str(bundle))
    assert tampered.returncode != 0
    out = tampered.stdout + tampered.stderr
    assert "passkey signature of user:alice@example.com does not prove this review" in out, out
    assert f"events.jsonl:{at + 1}" in out


def test_a_failed_user_verification_is_refused(world: ConsoleWorld) -> None:
    page = world.page()
    world.login(page, "alice")
    cdp, authenticator = virtual_authenticator(page)
    register_passkey(world, page)
    cdp.send("WebAuthn.setUserVerified", {"authenticatorId": authenticator, "isUserVerified": False})

    created = world.server.client("agent:deploy-bot").submit("db.export", params={"rows": 5000})
    page.goto(f"{world.base}/console/requests/{created['id']}")
    page.click("#approve-passkey")
    error = page.locator("#passkey-error, #review-error").first
    error.wait_for()
    assert page.locator("#status").inner_text() == "pending"
    assert world.server.client("agent:deploy-bot").get(created["id"])["status"] == "pending"


def test_a_revoked_passkey_no_longer_signs(world: ConsoleWorld) -> None:
    page = world.page()
    world.login(page, "alice")
    virtual_authenticator(page)
    register_passkey(world, page)
    page.locator("tr[data-passkey] button").click()
    page.locator("#no-passkeys").wait_for()
    created = world.server.client("agent:deploy-bot").submit("db.export", params={"rows": 5000})
    page.goto(f"{world.base}/console/requests/{created['id']}")
    page.click("#approve-passkey")
    page.locator("#passkey-error:not([hidden])").wait_for()
    assert "no passkey" in page.locator("#passkey-error").inner_text()
    assert world.server.client("agent:deploy-bot").get(created["id"])["status"] == "pending"
