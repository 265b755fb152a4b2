"""Replicas on one PostgreSQL with data dirs of their own share their signing keys (DESIGN §3 Deployment).

The keys are in the database, sealed under the key-encryption key every replica is given: a grant issued by
one replica is consumed on the other; a replica started without that key (or with another one) refuses to
start in one line; a grant signed before a rotation still consumes after it, until its key is retired.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import fresh_postgres_schema
from keyturn.signing_keys import new_kek
from support.live import LiveServer, free_port, keyturn_executable, start_server

pytestmark = pytest.mark.postgresql

AGENT = "agent:deploy-bot"
ADMIN = "user:frank@example.com"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    with fresh_postgres_schema() as url:
        first = start_server(tmp_path_factory.mktemp("keys"), database_url=url)
        try:
            second = first.start_replica(data_dir=tmp_path_factory.mktemp("other") / "data")
            yield first, second
        finally:
            first.stop()


def _grant(server: LiveServer) -> str:
    with server.client(AGENT) as agent:
        answer = agent.submit("test.allow", "svc://x", {"n": 1})
    assert answer["status"] == "allowed"
    grant: str = answer["grant"]
    return grant


def _consume(server: LiveServer, grant: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/grants/consume", json={"grant": grant}, headers=server.headers(AGENT), timeout=30
    )


def _kid(token: str) -> str:
    header = token.split(".")[0]
    kid: str = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    return kid


def test_the_data_dirs_are_separate_and_unused(pair: tuple[LiveServer, LiveServer]) -> None:
    one, two = pair
    config = yaml.safe_load(two.config_path.read_text())
    assert config["data_dir"] != yaml.safe_load(one.config_path.read_text())["data_dir"]
    assert not Path(config["data_dir"]).exists()  # the keys are in the database, not in a data dir
    assert httpx.get(f"{one.url}/readyz").json()["keys"] == "database"


def test_each_replica_accepts_the_others_grants(pair: tuple[LiveServer, LiveServer]) -> None:
    one, two = pair
    assert httpx.get(f"{one.url}/v1/keys").json() == httpx.get(f"{two.url}/v1/keys").json()
    for issuer, consumer in ((one, two), (two, one)):
        answer = _consume(consumer, _grant(issuer))
        assert answer.status_code == 200, answer.text


def test_a_grant_signed_before_a_rotation_consumes_after_it_until_retired(
    pair: tuple[LiveServer, LiveServer],
) -> None:
    one, two = pair
    before = _grant(one)
    spare = [_grant(one) for _ in range(40)]  # signed by the old key, consumed after its retirement
    old_kid = _kid(before)
    rotated = httpx.post(
        f"{two.url}/v1/admin/signing-keys/rotate", json={"purpose": "grant"}, headers=two.headers(ADMIN)
    )
    assert rotated.status_code == 200, rotated.text
    new_kid = rotated.json()["kid"]
    assert new_kid != old_kid
    # The replica that rotated signs with the new key at once; the other one within its refresh time.
    after = _grant(two)
    assert _kid(after) == new_kid
    assert _consume(one, after).status_code == 200  # a kid it had not seen: looked up in the database
    assert _consume(one, before).status_code == 200  # the old key still verifies
    jwks = httpx.get(f"{one.url}/v1/keys").json()["keys"]
    assert {old_kid, new_kid} <= {k["kid"] for k in jwks}

    retired = httpx.post(f"{one.url}/v1/admin/signing-keys/{old_kid}/retire", headers=one.headers(ADMIN))
    assert retired.status_code == 200, retired.text
    refused = _consume(one, spare.pop())  # at once on the replica that retired it …
    assert refused.status_code == 403 and "unknown key" in refused.json()["error"]["message"]
    # … and on the other one at its next read of the keys (every few seconds): poll, no timing assert.
    while spare:
        answer = _consume(two, spare.pop())
        if answer.status_code != 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the other replica kept accepting grants of a retired key")
    assert answer.status_code == 403 and "unknown key" in answer.json()["error"]["message"]
    listed = httpx.get(f"{two.url}/v1/admin/signing-keys", headers=two.headers(ADMIN)).json()["items"]
    states = {k["kid"]: k["state"] for k in listed}
    assert states[old_kid] == "retired" and states[new_kid] == "current"


def _serve(config: dict[str, object], workdir: Path) -> subprocess.CompletedProcess[str]:
    path = workdir / f"replica-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.run(
        [keyturn_executable(), "serve", "--config", str(path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )


def test_a_replica_without_the_key_encryption_key_refuses_to_start_in_one_line(
    pair: tuple[LiveServer, LiveServer], tmp_path: Path
) -> None:
    one, _ = pair
    config = yaml.safe_load(one.config_path.read_text())
    config.pop("key_encryption_key_file")
    config["data_dir"] = str(tmp_path / "data")
    started = _serve(config, tmp_path)
    assert started.returncode == 2
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1, started.stderr
    assert "KEYTURN_KEY_ENCRYPTION_KEY" in lines[0] and "replica" in lines[0]
    assert not (tmp_path / "data").exists()


def test_a_replica_with_another_key_encryption_key_refuses_to_start_in_one_line(
    pair: tuple[LiveServer, LiveServer], tmp_path: Path
) -> None:
    one, _ = pair
    config = yaml.safe_load(one.config_path.read_text())
    (tmp_path / "kek").write_text(new_kek(), encoding="ascii")
    config["key_encryption_key_file"] = str(tmp_path / "kek")
    started = _serve(config, tmp_path)
    assert started.returncode == 2
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1, started.stderr
    assert "sealed under key-encryption key" in lines[0] and "the same" in lines[0]
