"""The README's five-minute walkthrough, step by step, through the installed `keyturn` command and HTTP.

It runs on a copy of `examples/` (the configuration `make serve` uses), so the README and the example files
cannot drift from what the server does.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from keyturn.channels.slack import APPROVE
from support.fake_slack import (
    FakeSlack,
    SlackUser,
    click_payload,
    form_body,
    signed_headers,
    submission_payload,
)
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
def demo_files(tmp_path: Path) -> LiveServer:
    """`make serve`'s configuration, copied so the test writes its keys and tokens somewhere else; the
    server is not started yet."""
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
    return server


@pytest.fixture
def demo(demo_files: LiveServer) -> Iterator[LiveServer]:
    demo_files.start(timeout=120)  # a loaded machine starts the server slowly
    try:
        yield demo_files
    finally:
        demo_files.stop()


def agent_and_alice(demo: LiveServer) -> tuple[str, str]:
    """Step 1: an agent key and Alice's personal token, printed once."""
    examples = demo.config_path.parent
    agent = keyturn("api-keys", "create", "--agent", "deploy-bot", "--config", str(demo.config_path)).strip()
    alice = keyturn(
        "users", "add-token", "--users-file", str(examples / "users.yaml"), "user:alice@example.com"
    ).strip()
    return agent, alice


def submit_apply(url: str, agent: str) -> dict[str, Any]:
    """Step 2: the agent asks to apply a manifest."""
    submitted: dict[str, Any] = httpx.post(
        f"{url}/v1/actions",
        headers={"Authorization": f"Bearer {agent}"},
        json={
            "action": "k8s.apply",
            "resource": "k8s://staging/payments/deployment/api",
            "params": {"image": "payments-api:1.42", "replicas": 4},
            "justification": "roll out the fix for INC-1234",
            "context": {"environment": "staging"},
        },
    ).json()
    return submitted


def test_the_readme_walkthrough(demo: LiveServer) -> None:
    examples = demo.config_path.parent
    url = demo.url

    # 1. An agent key and personal tokens, printed once.
    agent, alice = agent_and_alice(demo)
    assert agent.startswith("kt_") and alice.startswith("ktu_")
    assert alice not in (examples / "users.yaml").read_text()  # only its hash is stored

    # 2. The agent asks; policy routes it to one SRE.
    as_agent = {"Authorization": f"Bearer {agent}"}
    submitted = submit_apply(url, agent)
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


# The README's Slack step, verbatim (README.md, after step 5). The test runs its commands against the fake
# Slack Web API of tests/support: the one difference is `api_url`, which a real set-up leaves at Slack's.
SLACK_STEP = """\
# 6. Reviewers in Slack. Create the Slack app from examples/slack-app-manifest.yaml (docs/channels.md
#    walks through it), give keyturn its bot token and signing secret, and announce the `high` tier:
export SLACK_BOT_TOKEN=xoxb-… SLACK_SIGNING_SECRET=…
cat >> examples/keyturn.yaml <<'EOF'
channels:
  slack:
    bot_token: {env: SLACK_BOT_TOKEN}
    signing_secret: {env: SLACK_SIGNING_SECRET}
EOF
sed -i 's|# notify: \\["slack:#ops-approvals"\\]|notify: ["slack:#ops-approvals"]|' examples/policy.yaml
#    Restart `make serve`, invite the bot to #ops-approvals, and check the set-up:
keyturn channels test slack:#ops-approvals       # → a test message in the channel
#    Submit as in step 2: the request appears in #ops-approvals as a card. The first time Alice clicks
#    Approve…, Slack shows her alone a one-time code; she links her Slack account once, as herself:
KEYTURN_TOKEN=$ALICE keyturn chat link ktl_…
#    Her next click on Approve… opens a form; she approves there, and the card shows who approved.
"""

SLACK_TOKEN = "xoxb-1234-5678-walkthrough"
SLACK_SECRET = "walkthrough-signing-secret-0123456789"
ALICE_SLACK = "U0ALICE"
LINK_CODE = re.compile(r"keyturn chat link (ktl_[A-Za-z0-9_-]+)")


def slack_step_lines() -> tuple[str, str, str]:
    """(the configuration commands, the `channels test` line, the `chat link` line) of SLACK_STEP."""
    lines = SLACK_STEP.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("cat >> "))
    end = next(i for i, line in enumerate(lines) if line.startswith("sed -i "))
    check = next(line for line in lines if line.startswith("keyturn channels test "))
    link = next(line for line in lines if " keyturn chat link " in line)
    return "\n".join(lines[start : end + 1]) + "\n", check, link


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack(token=SLACK_TOKEN, users=[SlackUser(ALICE_SLACK, "alice@example.com")]).start() as fake:
        yield fake


def send(url: str, payload: dict[str, Any]) -> httpx.Response:
    """What Slack does with a click or a form: a signed form post to the interactivity endpoint."""
    body = form_body(payload)
    return httpx.post(
        f"{url}/v1/channels/slack/interactivity", content=body, headers=signed_headers(SLACK_SECRET, body)
    )


def test_the_readme_slack_step(
    demo_files: LiveServer, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure, check, link = slack_step_lines()
    # `export SLACK_BOT_TOKEN=… SLACK_SIGNING_SECRET=…`, and the walkthrough's `export KEYTURN_CONFIG`
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SLACK_SECRET)
    monkeypatch.setenv("KEYTURN_CONFIG", str(demo_files.config_path))
    subprocess.run(["bash", "-euc", configure], cwd=demo_files.workdir, check=True, timeout=30)
    with demo_files.config_path.open("a", encoding="utf-8") as config:
        config.write(f"    api_url: {fake_slack.api_url}\n")  # the fake instead of slack.com
    policy = (demo_files.config_path.parent / "policy.yaml").read_text()
    assert '\n    notify: ["slack:#ops-approvals"]\n' in policy  # the sed uncommented the high tier's line

    demo_files.start(timeout=120)  # "restart `make serve`"
    try:
        url = demo_files.url
        agent, alice = agent_and_alice(demo_files)
        keyturn(*shlex.split(check.split("  # ")[0])[1:])  # the line without its trailing comment
        channel = fake_slack.channel_id("#ops-approvals")
        assert len(fake_slack.messages[channel]) == 1  # the set-up check's test message

        request_id = submit_apply(url, agent)["id"]
        ts = fake_slack.wait_for(
            lambda fake: next((t for t, m in fake.messages[channel].items() if request_id in str(m)), None),
            30,
        )

        def click() -> httpx.Response:
            payload = click_payload(
                user=ALICE_SLACK,
                action_id=APPROVE,
                request_id=request_id,
                channel=channel,
                message_ts=ts,
                trigger_id=fake_slack.new_trigger(),
            )
            return send(url, payload)

        assert click().status_code == 200
        said = fake_slack.wait_for(
            lambda fake: [e["text"] for e in fake.ephemerals if LINK_CODE.search(e["text"])]
        )
        code = LINK_CODE.search(said[-1])
        assert code is not None
        command = shlex.split(link.replace("ktl_…", code.group(1)))
        assert command[:2] == ["KEYTURN_TOKEN=$ALICE", "keyturn"]
        assert "linked slack account" in keyturn(*command[2:], token=alice, url=url)

        assert click().status_code == 200
        modal = fake_slack.wait_for(lambda fake: fake.views[-1] if fake.views else None)
        submitted = send(url, submission_payload(user=ALICE_SLACK, view=modal, values={}))
        assert submitted.status_code == 200 and submitted.content == b"", submitted.text
        approved = "approved by user:alice@example.com"
        fake_slack.wait_for(lambda fake: approved in str(fake.messages[channel][ts]), 30)
        assert "approved" in keyturn("show", request_id, token=alice, url=url)
    finally:
        demo_files.stop()
