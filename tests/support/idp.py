"""A real OpenID provider for tests: panva's `oidc-provider` (OpenID Certified) on the machine's Node.js.

    provider = start_oidc_provider(tmp_path, redirect_uris=[...], users={"alice": {...}})
    provider.issuer, provider.client_id, provider.client_secret
    provider.stop()

Its npm dependencies are installed from tests/support/oidc_provider/package-lock.json by `npm ci` (in CI by
.ci/run; locally on first use). Under CI=true a missing Node.js or package fails the test, never skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.live import free_port

HERE = Path(__file__).parent / "oidc_provider"

# The IdP's users; `password` is the IdP's, keyturn never sees it. Groups come through the `groups` claim.
DEFAULT_IDP_USERS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@example.com", "groups": ["sre"], "name": "Alice"},
    "bob": {"email": "bob@example.com", "groups": ["sre"], "name": "Bob"},
    "carol": {"email": "carol@example.com", "groups": ["security"], "name": "Carol"},
    "olivia": {"email": "olivia@example.com", "groups": ["sre"], "name": "Olivia"},
    "mallory": {
        "email": "mallory@example.com",
        "groups": ["sre"],
        "name": "Mallory",
        "email_verified": False,
    },
}
IDP_PASSWORD = "correct horse battery staple"


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it in .ci/run)")
    pytest.skip(reason)


def ensure_installed() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        _missing("Node.js and npm are needed for the test OpenID provider: apt-get install nodejs npm")
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        if os.environ.get("CI"):
            pytest.fail("tests/support/oidc_provider: node_modules missing; .ci/run must run `npm ci` there")
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {HERE} failed:\n{done.stdout}\n{done.stderr}")


@dataclass
class OidcProvider:
    issuer: str
    client_id: str
    client_secret: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_oidc_provider(
    workdir: Path,
    *,
    redirect_uris: Sequence[str],
    users: Mapping[str, Mapping[str, Any]] = DEFAULT_IDP_USERS,
    timeout: float = 60.0,
) -> OidcProvider:
    ensure_installed()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    config = {
        "issuer": issuer,
        "port": port,
        "clients": [
            {
                "client_id": "keyturn-console",
                "client_secret": "console-secret",
                "redirect_uris": list(redirect_uris),
            }
        ],
        "users": {
            name: {"password": IDP_PASSWORD, "email_verified": True, **dict(spec)}
            for name, spec in users.items()
        },
    }
    config_path = workdir / "oidc-provider.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    log_path = workdir / "oidc-provider.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            ["node", str(HERE / "server.mjs"), str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=HERE,
        )
    provider = OidcProvider(issuer, "keyturn-console", "console-secret", process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the OpenID provider exited with {process.returncode}:\n{provider.log()}")
        try:
            if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=1.0).status_code == 200:
                return provider
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    provider.stop()
    raise RuntimeError(f"the OpenID provider did not start in {timeout}s:\n{provider.log()}")
