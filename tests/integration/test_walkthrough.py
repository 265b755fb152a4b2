"""The README's five-minute walkthrough, step by step, through the installed `keyturn` command and HTTP.

It runs on a copy of `examples/` (the configuration `make serve` uses), so the README and the example files
cannot drift from what the server does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.live import LiveServer, free_port, keyturn_executable

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def keyturn(*args: str, token: str | None = None, url: str | None = None, check: bool = True) -> str:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("KEYTURN_TOKEN", None)
    if token is not None:
        env["KEYTURN_TOKEN"] = token
    if url is not None:
        env["KEYTURN_URL"] = url
    done = subprocess.run(
        [keyturn_executable(), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if check:
        assert done.returncode == 0, f"keyturn {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout if check else done.stdout + done.stderr + f"\nexit={done.returncode}"


@pytest.fixture
def demo(tmp_path: Path) -> Any:
    """`make serve`'s configuration, copied so the test writes its keys and tokens somewhere else."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    config_path = tmp_path / "examples" / "keyturn.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert config["database"].startswith("sqlite:///") and config["users_file"] == "users.yaml"
    port = free_port()
    config["port"] = port
    config_path.write_text(yaml.safe_dump(config))
    server = LiveServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        workdir=tmp_path,
        config_path=config_path,
        database_url="sqlite:///" + str(config_path.parent / config["database"].removeprefix("sqlite:///")),
        tokens={},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_readme_walkthrough(demo: LiveServer) -> None:
    examples = demo.config_path.parent
    url = demo.url

    # 1. An agent key and personal tokens, printed once.
    agent = keyturn("api-keys", "create", "--agent", "deploy-bot", "--config", str(demo.config_path)).strip()
    alice = keyturn(
        "users", "add-token", "--users-file", str(examples / "users.yaml"), "user:alice@example.com"
    ).strip()
    assert agent.startswith("kt_") and alice.startswith("ktu_")
    assert alice not in (examples / "users.yaml").read_text()  # only its hash is stored

    # 2. The agent asks; policy routes it to one SRE.
    as_agent = {"Authorization": f"Bearer {agent}"}
    submitted = httpx.post(
        f"{url}/v1/actions",
        headers=as_agent,
        json={
            "action": "k8s.apply",
            "resource": "k8s://staging/payments/deployment/api",
            "params": {"image": "payments-api:1.42", "replicas": 4},
            "justification": "roll out the fix for INC-1234",
            "context": {"environment": "staging"},
        },
    ).json()
    request_id = submitted["id"]
    assert submitted["status"] == "pending" and submitted["still_needed"] == ["1 from sre"]
    assert submitted["review_url"].endswith(request_id)

    # 3. Alice sees it in her queue and approves; the agent cannot approve its own request.
    assert request_id in keyturn("list", "--reviewable", token=alice, url=url)
    refused = keyturn("approve", request_id, token=agent, url=url, check=False)
    assert "exit=1" in refused and "agent" in refused
    assert "approved" in keyturn("approve", request_id, "--comment", "looks right", token=alice, url=url)

    # 4. The grant is consumed exactly once; then the outcome is reported.
    grant = httpx.get(f"{url}/v1/actions/{request_id}", headers=as_agent).json()["grant"]
    first = httpx.post(f"{url}/v1/grants/consume", headers=as_agent, json={"grant": grant})
    assert first.status_code == 200 and first.json()["params"] == {
        "image": "payments-api:1.42",
        "replicas": 4,
    }
    again = httpx.post(f"{url}/v1/grants/consume", headers=as_agent, json={"grant": grant})
    assert again.status_code == 409 and again.json()["error"]["code"] == "grant_already_consumed"
    result = httpx.post(
        f"{url}/v1/actions/{request_id}/result", headers=as_agent, json={"status": "succeeded"}
    )
    assert result.json()["status"] == "succeeded"

    # 5. The whole story, and the ledger behind it, verified after a clean shutdown signed a checkpoint.
    shown = keyturn("show", request_id, token=alice, url=url)
    for fact in ("succeeded", "k8s applies", "looks right", "grant.consumed", "request.succeeded"):
        assert fact in shown
    demo.stop()
    verified = keyturn("ledger", "verify", "--database", demo.database_url)
    assert verified.startswith("OK"), verified
    assert verified.startswith(
        "OK: 8 events, 1 checkpoint and 0 external checkpoints verified"
    )  # the shutdown checkpoint covers all 8: the request's 7 and the agent key's creation (ledgered)
    # The auditor's evidence report, from the database alone, verifies the same ledger.
    report = keyturn(
        "ledger", "report", "--database", demo.database_url, "--out", str(demo.workdir / "report.html")
    )
    assert "0 anomalies; ledger verified" in report, report
    html = (demo.workdir / "report.html").read_text()
    assert request_id in html and "user:alice@example.com" in html and "CC6.1" in html

    # The README's auditor steps: export a bundle from the database alone and verify it against the
    # checkpoint the witness directory kept outside the database.
    bundle = demo.workdir / "bundle"
    keyturn("ledger", "export", "--database", demo.database_url, "--out", str(bundle))
    witnessed = demo.workdir / "keyturn-data" / "witness" / "latest"
    assert witnessed.exists()
    verified = keyturn("ledger", "verify", "--bundle", str(bundle), "--checkpoint", str(witnessed))
    assert verified.startswith("OK: 8 events, 1 checkpoint and 1 external checkpoint verified"), verified
