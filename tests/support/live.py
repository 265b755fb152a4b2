"""Real `keyturn serve` processes for tests: a policy, a users file, agent keys, a free port, readiness.

    server = start_server(tmp_path)  # SQLite, DEFAULT_POLICY, DEFAULT_USERS, DEFAULT_AGENTS
    server = start_server(tmp_path, database_url=pg, policy=POLICY_YAML, settings={"timer_interval": 0.1})
    alice = server.client("user:alice@example.com")  # a keyturn.client.Client with that identity's token
    server.tokens["agent:deploy-bot"]  # bearer token (agent API key or user token)
    replica = server.start_replica()  # a second process on the same database and keys
    server.kill(); server.restart()  # kill -9, then start again on the same port

The `live_server` fixture (tests/conftest.py) gives one on SQLite with the defaults; `live_servers` is a
factory that stops every server it started. Nothing here fakes the server: it is the real entry point.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from keyturn.client import Client

# Humans of the test world. `sam` is in two groups, to check that one person never fills two requirements.
DEFAULT_USERS: dict[str, dict[str, Any]] = {
    "user:alice@example.com": {"groups": ["sre"]},
    "user:bob@example.com": {"groups": ["sre"]},
    "user:sam@example.com": {"groups": ["sre", "security"]},
    "user:carol@example.com": {"groups": ["security"]},
    "user:dave@example.com": {"groups": ["security"]},
    "user:dana@example.com": {"groups": ["data-owners"]},
    "user:erin@example.com": {"groups": [], "roles": ["auditor"]},
    "user:frank@example.com": {"groups": [], "roles": ["admin"]},
    "user:olivia@example.com": {"groups": ["sre"]},  # the human agents act for (on_behalf_of) in tests
}
DEFAULT_AGENTS: dict[str, list[str]] = {"agent:deploy-bot": ["bots"], "agent:exec-bot": ["bots"]}

DEFAULT_POLICY = """\
version: 1
defaults:
  decision: review
  approvers: [security]
  ttl: 1h
tiers:
  critical:
    require: [{groups: [sre], count: 2}, {groups: [security], count: 1}]
    ttl: 15m
rules:
  - name: reads are free
    match: {action: ["*.read", "*.list", "*.get", "test.allow"]}
    decision: allow
  - name: never
    match: {action: test.deny}
    decision: deny
    reason: test.deny is never allowed
  - name: exports need an sre
    match: {action: db.export}
    decision: review
    quorum: 1
    approvers: [sre]
    editable: [params.rows]
    redact: [params.connection_string]
  - name: huge exports are refused
    match: {action: db.export}
    when: "has(params.rows) && params.rows > 1000000"
    decision: deny
    reason: exports over a million rows are refused
  - name: critical deletes
    match: {action: k8s.delete}
    decision: review
    tier: critical
  - name: shell commands
    match: {action: shell.exec}
    decision: review
    quorum: 1
    approvers: [sre]
    editable: [params.argv, params.cwd]
  - name: production deploys need presence
    match: {action: deploy.prod}
    decision: review
    quorum: 1
    approvers: [sre]
    step_up: true
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def keyturn_executable() -> str:
    """The `keyturn` console script of the interpreter running the tests."""
    candidate = Path(sys.executable).parent / "keyturn"
    return str(candidate) if candidate.exists() else "keyturn"


@dataclass
class LiveServer:
    url: str
    port: int
    workdir: Path
    config_path: Path
    database_url: str
    tokens: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    replicas: list[LiveServer] = field(default_factory=list)

    def client(self, who: str, timeout: float = 30.0) -> Client:
        return Client(self.url, self.tokens[who], timeout=timeout)

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def start(self, timeout: float = 30.0) -> None:
        self.log_path = self.workdir / f"server-{self.port}.log"
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [keyturn_executable(), "serve", "--config", str(self.config_path), "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"keyturn serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"keyturn serve did not become ready in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: the server signs its final ledger checkpoint), then the replicas."""
        for replica in self.replicas:
            replica.stop()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """`kill -9`: no shutdown hook runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def start_replica(self, timeout: float = 30.0) -> LiveServer:
        """Another `keyturn serve` on the same configuration, database and signing keys (PostgreSQL only)."""
        port = free_port()
        replica = LiveServer(
            url=f"http://127.0.0.1:{port}",
            port=port,
            workdir=self.workdir,
            config_path=self.config_path,
            database_url=self.database_url,
            tokens=self.tokens,
        )
        replica.start(timeout)
        self.replicas.append(replica)
        return replica


def write_users_file(path: Path, users: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Write a users file and give every user a personal token; returns id -> plaintext token."""
    from keyturn.identity.users import add_user_token

    document = {
        "users": [
            {
                "id": user_id,
                "name": user_id.split(":", 1)[1].split("@")[0].title(),
                "groups": list(spec.get("groups", [])),
                "roles": list(spec.get("roles", [])),
                "tokens": [],
            }
            for user_id, spec in users.items()
        ]
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return {user_id: add_user_token(path, user_id, "tests") for user_id in users}


def create_agent_keys(database_url: str, agents: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Create one API key per agent in the database (migrating it first); returns id -> plaintext key."""
    from keyturn.identity.api_keys import generate_api_key
    from keyturn.store import SqlApiKeyRepository, Store

    store = Store.open(database_url)
    try:
        store.upgrade()
        repository = SqlApiKeyRepository(store)
        tokens = {}
        for agent_id, groups in agents.items():
            plaintext, record = generate_api_key(agent_id, list(groups), datetime.now(UTC))
            repository.add(record)
            tokens[agent_id] = plaintext
        return tokens
    finally:
        store.close()


def start_server(
    workdir: Path,
    *,
    database_url: str | None = None,
    policy: str = DEFAULT_POLICY,
    users: Mapping[str, Mapping[str, Any]] = DEFAULT_USERS,
    agents: Mapping[str, Sequence[str]] = DEFAULT_AGENTS,
    settings: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> LiveServer:
    """Write a configuration under `workdir` and start `keyturn serve` on a free loopback port.

    `settings` are merged into keyturn.yaml (e.g. `{"timer_interval": 0.1, "secrets": {...}}`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = database_url or f"sqlite:///{workdir / 'keyturn.db'}"
    (workdir / "policy.yaml").write_text(policy, encoding="utf-8")
    tokens = write_users_file(workdir / "users.yaml", users)
    tokens.update(create_agent_keys(database_url, agents))
    port = free_port()
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "database": database_url,
        "policy": [str(workdir / "policy.yaml")],
        "users_file": str(workdir / "users.yaml"),
        "data_dir": str(workdir / "data"),
        "timer_interval": 0.2,
        "log_level": "warning",
        "ledger": {"origin": "keyturn.test/ledger", "checkpoint_every": 50, "checkpoint_interval": 5},
    }
    for key, value in (settings or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    config_path = workdir / "keyturn.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    server = LiveServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        workdir=workdir,
        config_path=config_path,
        database_url=database_url,
        tokens=tokens,
    )
    server.start(timeout)
    return server
