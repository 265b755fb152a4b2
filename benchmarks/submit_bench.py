"""Allowed submit over HTTP: `POST /v1/actions` on a real `keyturn serve` vs a bare FastAPI endpoint.

Side by side in one run, for SQLite and PostgreSQL:

  keyturn   one `keyturn serve` process (tests/support/live.py: its policy, users and agent keys); the agent
            submits `test.allow` (allowed by policy: the request, its decision record, its grant and three
            ledger events are stored in one durable transaction before the 201)
  bare      a FastAPI app on the same uvicorn with the same options (`keyturn.server.run.uvicorn_options`:
            the same h11 protocol class, keep-alive, concurrency limit) whose endpoint parses the same body
            with the same `SubmitBody` model in the same kind of (sync, thread-pool) handler and replies
            with a JSON object of the same size as keyturn's answer — the floor of the stack

The load generator is a separate process (this script with `--drive`): asyncio and raw HTTP/1.1 keep-alive
sockets, no HTTP library, so its own cost per request is a few microseconds. It drives 1 connection
(latency: p50/p99 over `--requests`) and 16 connections (throughput over `--seconds`). The server's CPU
per request is read from /proc/<pid>/stat (utime + stime of the server process, all its threads) around
each phase.

    .venv/bin/python benchmarks/submit_bench.py [--requests 500] [--seconds 5] [--postgres URL]

Writes benchmarks/results/submit.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keyturn.server.api.schemas import SubmitBody  # module level: FastAPI resolves the annotation here

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

AGENT = "agent:deploy-bot"
BODY = {
    "action": "test.allow",
    "resource": "repo://keyturn/main",
    "params": {"path": "src/keyturn/service.py", "lines": [1, 200], "reason": "read before a refactor"},
    "justification": "the agent reads a file it is about to change",
    "context": {"session": "bench", "tool": "Read"},
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the load generator (a separate process) --------------------------------------------------------------


async def _connection(
    host: str, port: int, request: bytes, until: float, limit: int, latencies: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until and len(latencies) < limit:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status not in (200, 201):
                errors.append(f"{status}: {body[:200]!r}")
                return
    finally:
        writer.close()


async def _drive(url: str, token: str, connections: int, seconds: float, limit: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(BODY).encode()
    request = (
        f"POST /v1/actions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *(_connection(host, int(port), request, until, limit, latencies, errors) for _ in range(connections))
    )
    return {"latencies": latencies, "elapsed": time.perf_counter() - started, "errors": errors}


def drive(url: str, token: str, connections: int, seconds: float, limit: int) -> dict[str, Any]:
    """Run the load generator in its own process, so it never competes for this process's GIL."""
    output = subprocess.run(
        [sys.executable, __file__, "--drive", url, token, str(connections), str(seconds), str(limit)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(output)
    return result


# --- the bare endpoint -------------------------------------------------------------------------------------


def bare_app(reply_size: int) -> Any:
    from fastapi import FastAPI

    app = FastAPI()
    filler = "x" * reply_size

    @app.post("/v1/actions", status_code=201)
    def submit(body: SubmitBody) -> dict[str, Any]:
        return {"id": "req_bare", "status": "allowed", "request": body.model_dump(), "filler": filler}

    return app


def serve_bare(port: int, reply_size: int) -> None:
    import uvicorn

    from keyturn.config import Settings
    from keyturn.server.run import uvicorn_options

    options = uvicorn_options(Settings(host="127.0.0.1", port=port, log_level="warning"))
    uvicorn.run(bare_app(reply_size), **options)


@dataclass
class Bare:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


def start_bare(reply_size: int) -> Bare:
    import httpx

    from support.live import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port), str(reply_size)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/docs", timeout=1.0)
            return Bare(url, process)
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the bare server did not start")


# --- measuring ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def _quantile(sorted_values: list[float], q: float) -> float:
    rank = max(1, -(-len(sorted_values) * q // 1))  # nearest rank: never below a real sample
    return sorted_values[int(rank) - 1]


def phase(url: str, token: str, pid: int, connections: int, seconds: float, limit: int) -> dict[str, float]:
    cpu_before = cpu_seconds(pid)
    result = drive(url, token, connections, seconds, limit)
    cpu = cpu_seconds(pid) - cpu_before
    if result["errors"]:
        raise RuntimeError(f"{url}: {result['errors'][0]}")
    ms = sorted(x * 1000 for x in result["latencies"])
    return {
        "n": len(ms),
        "rps": len(ms) / result["elapsed"],
        "p50": statistics.median(ms),
        "p99": _quantile(ms, 0.99),
        "cpu_ms": cpu * 1000 / len(ms),
    }


def measure(url: str, token: str, pid: int, requests: int, seconds: float) -> dict[str, dict[str, float]]:
    drive(url, token, 4, 2.0, 200)  # warm up: imports, caches, connection pool
    return {
        "1": phase(url, token, pid, 1, 600.0, requests),
        "16": phase(url, token, pid, 16, seconds, 1 << 30),
    }


def machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"`nproc` {os.cpu_count()}, {model}, Python {sys.version.split()[0]}"


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run(requests: int, seconds: float, postgres: str) -> str:
    import httpx

    from conftest import fresh_postgres_schema
    from support.live import start_server

    started_at = datetime.now(UTC)
    load_before = load()
    rows: list[str] = []
    for backend in ("sqlite", "postgresql"):
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            database_url = stack.enter_context(fresh_postgres_schema()) if backend == "postgresql" else None
            server = start_server(Path(tmp) / "kt", database_url=database_url)
            stack.callback(server.stop)
            token = server.tokens[AGENT]
            reply = httpx.post(f"{server.url}/v1/actions", json=BODY, headers=server.headers(AGENT))
            reply.raise_for_status()
            assert reply.json()["status"] == "allowed", reply.text
            bare = start_bare(len(reply.content))
            stack.callback(bare.stop)
            assert server.process is not None
            print(f"{backend}: keyturn…", flush=True)
            keyturn = measure(server.url, token, server.process.pid, requests, seconds)
            print(f"{backend}: bare…", flush=True)
            floor = measure(bare.url, token, bare.process.pid, requests, seconds)
        for connections in ("1", "16"):
            k, b = keyturn[connections], floor[connections]
            rows.append(
                f"| {backend} | {connections} | **{k['rps']:,.0f}** | {k['p50']:.2f} | {k['p99']:.2f} "
                f"| {k['cpu_ms']:.2f} | {b['rps']:,.0f} | {b['p50']:.2f} | {b['p99']:.2f} "
                f"| {b['cpu_ms']:.2f} "
                f"| **{k['rps'] / b['rps']:.2f}x** |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    return f"""# Allowed submit over HTTP

`POST /v1/actions` for an action policy allows, on one `keyturn serve` process, against a bare FastAPI
endpoint on the same uvicorn doing the same JSON parse and reply. Produced by `benchmarks/submit_bench.py`
on {started_at:%Y-%m-%d %H:%M} UTC; machine: {machine()}; load average (`uptime`) before the run
{load_before}, after {load()}.

| backend | connections | keyturn req/s | p50 ms | p99 ms | CPU ms/req \
| bare req/s | p50 ms | p99 ms | CPU ms/req | keyturn / bare |
|---|---|---|---|---|---|---|---|---|---|---|
{table}

Goals (issue #12): ≥ 2,000/s with 16 connections, ≥ 0.3x bare, p99 ≤ 10 ms at 1 connection.

- 1 connection: {requests} requests one after the other (latency); 16 connections: as many as complete in
  {seconds:g} s (throughput). A warm-up of 2 s on 4 connections precedes each server's phases.
- Load generator: a separate Python process, asyncio with raw HTTP/1.1 keep-alive sockets (no HTTP
  library); it shares the machine's cores with the server, the same for keyturn and bare.
- Server CPU: utime + stime of the server process (all threads) over the phase, divided by requests.
- Every keyturn submit is durable before its 201: SQLite in WAL mode with `synchronous=FULL`, PostgreSQL
  15 on loopback with its default `synchronous_commit`.
"""


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        url, token, connections, seconds, limit = sys.argv[2:7]
        result = asyncio.run(_drive(url, token, int(connections), float(seconds), int(limit)))
        print(json.dumps(result))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="sequential requests at 1 connection")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the 16-connection phase")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("KEYTURN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "submit.md")
    args = parser.parse_args()
    os.environ["KEYTURN_TEST_POSTGRES_URL"] = args.postgres
    report = run(args.requests, args.seconds, args.postgres)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
