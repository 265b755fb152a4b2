"""What `keyturn mcp-proxy` adds to an allowed tool call, and how long the proxy takes to start.

The same `git_status` call on a temporary repository, from the official MCP ClientSession:

  (a) direct   the client talks to `python -m mcp_server_git` itself
  (b) proxied  the client talks to `keyturn mcp-proxy --name git -- python -m mcp_server_git …`; every call is
               submitted to a real `keyturn serve` (SQLite), allowed by policy, its grant consumed, the
               upstream called, and the outcome reported: three HTTP round trips and four ledger events

    .venv/bin/python benchmarks/mcp_bench.py [--samples 200]

Writes benchmarks/results/mcp.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.live import start_server  # noqa: E402
from support.mcp_harness import AGENT, git_upstream, make_repo, proxy_parameters  # noqa: E402

POLICY = """\
version: 1
defaults: {decision: review, approvers: [security], ttl: 1h}
rules:
  - name: git reads are free
    match: {action: mcp.git.git_status}
    decision: allow
"""


async def measure(parameters: StdioServerParameters, repo: Path, samples: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    async with stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        startup = time.perf_counter() - started
        await session.call_tool("git_status", {"repo_path": str(repo)})  # warm-up
        latencies = []
        for _ in range(samples):
            t0 = time.perf_counter()
            result = await session.call_tool("git_status", {"repo_path": str(repo)})
            latencies.append(time.perf_counter() - t0)
            assert not result.is_error
    return startup, latencies


def row(name: str, startup: float, latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"| {name} | {startup:.2f} s | {statistics.median(ms):.1f} | {p95:.1f} | {max(ms):.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        repo = make_repo(work / "repo")
        server = start_server(work / "keyturn", policy=POLICY)
        try:
            direct = StdioServerParameters(command=sys.executable, args=git_upstream(repo)[1:])
            proxied = proxy_parameters(
                server.url, server.tokens[AGENT], "--name", "git", upstream=git_upstream(repo)
            )
            d_start, d_lat = anyio.run(measure, direct, repo, args.samples)
            p_start, p_lat = anyio.run(measure, proxied, repo, args.samples)
        finally:
            server.stop()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    overhead = statistics.median(p_lat) - statistics.median(d_lat)
    python = platform.python_version()
    lines = [
        "# MCP gateway: overhead of an allowed tool call",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {model} · nproc {nproc} · Python {python}"
        f" · load average {os.getloadavg()[0]:.1f} at the end of the run",
        "",
        f"`benchmarks/mcp_bench.py --samples {args.samples}`: `git_status` on a temporary repository,",
        "one call at a time from the official MCP ClientSession. Proxied calls go through a real",
        "`keyturn serve` (SQLite): submit (allowed by policy), consume the grant, call the upstream,",
        "report the outcome.",
        "",
        "| set-up | start-up (initialize answered) | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
        row("direct: mcp-server-git", d_start, d_lat),
        row("proxied: keyturn mcp-proxy → mcp-server-git", p_start, p_lat),
        "",
        f"Median overhead of the gate on an allowed call: **{overhead * 1000:.1f} ms** (three HTTP round",
        "trips to keyturn, each a database transaction with its ledger events). A call that needs review",
        "waits for the human; the proxy adds the same overhead once the grant is issued.",
        "",
    ]
    out = ROOT / "benchmarks" / "results" / "mcp.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
