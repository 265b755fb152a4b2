"""A full disk under a real `keyturn serve` on SQLite (issue #13 §5): writes are answered 503
`storage_full` (never 500, never "try again in 1 s"), `/readyz` says not ready and why, `/healthz` stays
up, and once there is room again everything works without a restart.

The database lives on a small tmpfs mounted for the test (root only; CI runs as root).
PostgreSQL's SQLSTATE 53100 is classified the same way (tests/unit/test_store_errors.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.live import LiveServer, start_server

AGENT = "agent:deploy-bot"


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "6m") -> Iterator[Path]:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem says ENOSPC (unbuffered: every byte that fits is on the disk)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def submit(server: LiveServer, n: int) -> httpx.Response:
    body = {"action": "db.export", "resource": "postgres://prod/x", "params": {"rows": n, "pad": "p" * 4000}}
    return httpx.post(server.url + "/v1/actions", json=body, headers=server.headers(AGENT), timeout=30)


def wait_for_readyz(server: LiveServer, status: int) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(server.url + "/readyz", timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.3)


def test_a_full_disk_is_reported_as_such_and_readiness_follows(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        server = start_server(
            tmp_path / "server", database_url=f"sqlite:///{disk / 'keyturn.db'}", timeout=120
        )
        try:
            assert submit(server, 1).status_code == 201
            filler = fill(disk)
            answers = [submit(server, n) for n in range(2, 40)]
            statuses = {r.status_code for r in answers}
            assert all(s in (201, 503) for s in statuses), [r.text for r in answers if r.status_code >= 400]
            refused = [r for r in answers if r.status_code == 503]
            assert refused, "every write succeeded on a full disk?"
            assert {r.json()["error"]["code"] for r in refused} == {"storage_full"}
            assert all(int(r.headers["retry-after"]) >= 10 for r in refused)
            assert "disk is full" in refused[0].json()["error"]["message"]

            not_ready = wait_for_readyz(server, 503)
            assert not_ready.status_code == 503 and not_ready.json()["code"] == "storage_full"
            assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200

            filler.unlink()
            assert wait_for_readyz(server, 200).status_code == 200
            assert submit(server, 99).status_code == 201
        finally:
            server.stop()
            log = server.log()
    assert "unhandled error" not in log, log[-3000:]
