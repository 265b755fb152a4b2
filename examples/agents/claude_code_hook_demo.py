"""Claude Code's PreToolUse hook, `keyturn hook claude-code`, fed what Claude Code would send it.

Claude Code runs the hook once per tool call with JSON on stdin and reads the decision from stdout. This
script does the same for a Bash call so you can approve it from the CLI and see the JSON Claude Code
would receive. To use it for real, put this in .claude/settings.json (the hook's `timeout` must exceed
keyturn's `--timeout`):

    {"hooks": {"PreToolUse": [{"matcher": "*", "hooks": [{"type": "command", "timeout": 330,
      "command": "keyturn hook claude-code --action Bash=shell.exec --timeout 300"}]}]}}

    make serve                                   # terminal 1
    export KEYTURN_API_KEY=…                     # an agent key (see README.md here)
    .venv/bin/python examples/agents/claude_code_hook_demo.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _demo import URL, api_key

hook_input = {
    "session_id": "demo-session",
    "transcript_path": "/tmp/demo-transcript.jsonl",
    "cwd": os.getcwd(),
    "permission_mode": "default",
    "hook_event_name": "PreToolUse",
    "tool_name": "Bash",
    "tool_input": {"command": "kubectl rollout restart deploy/api", "description": "restart the API"},
    "tool_use_id": "toolu_demo",
}

keyturn = Path(sys.executable).parent / "keyturn"
print("  ⏳ waiting for an SRE: keyturn list --reviewable, then keyturn approve ID (or deny ID --reason …)")
completed = subprocess.run(
    [str(keyturn), "hook", "claude-code", "--action", "Bash=shell.exec", "--timeout", "600"],
    input=json.dumps(hook_input),
    capture_output=True,
    text=True,
    env={**os.environ, "KEYTURN_URL": URL, "KEYTURN_API_KEY": api_key()},
    check=False,
)
print(json.dumps(json.loads(completed.stdout), indent=2) if completed.stdout else completed.stderr)
