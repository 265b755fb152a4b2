"""Slack credentials without a value stop `keyturn serve` with one line, not a traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from support.live import DEFAULT_POLICY, free_port, keyturn_executable


def test_missing_slack_token_is_a_one_line_start_up_error(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(DEFAULT_POLICY)
    config = {
        "port": free_port(),
        "database": f"sqlite:///{tmp_path / 'k.db'}",
        "policy": [str(tmp_path / "policy.yaml")],
        "data_dir": str(tmp_path / "data"),
        "channels": {
            "slack": {
                "bot_token": {"env": "KEYTURN_TEST_UNSET_SLACK_TOKEN"},
                "signing_secret": {"file": str(tmp_path / "no-such-secret")},
            }
        },
    }
    (tmp_path / "keyturn.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "KEYTURN_TEST_UNSET_SLACK_TOKEN"}
    done = subprocess.run(
        [keyturn_executable(), "serve", "--config", str(tmp_path / "keyturn.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "channels.slack.signing_secret" in lines[0] and "Traceback" not in done.stderr
