"""What `keyturn mcp-proxy` adds to an allowed tool call, and how long the proxy takes to start.

The same `git_status` call on a temporary repository, from the official MCP ClientSession:

  (a) direct      the client talks to `python -m mcp_server_git` itself
  (b) one trip    the client talks to `keyturn mcp-proxy --name git -- python -m mcp_server_git …`; every call
                  is submitted with `execute: true` to a real `keyturn serve`, allowed by policy and its grant
                  consumed in the same durable write, the upstream called, the outcome reported in the
                  background: one HTTP round trip on the call's path
  (c) 3 trips     the same proxy as it was before #12 (the SDK and gateway of `--before`, default the commit
                  before the change, run from a `git archive` of it against the same server): submit,
                  consume, call, report, three round trips on the call's path

The three set-ups run in turn, `--rounds` times, each round `--samples` calls, on SQLite and on PostgreSQL
(`KEYTURN_TEST_POSTGRES_URL`), so a loaded machine slows them alike: read the differences and ratios.

    .venv/bin/python benchmarks/mcp_bench.py [--samples 100] [--rounds 2] [--no-postgres] [--before REF]

Writes benchmarks/results/mcp.md. Goal (#12): the proxy adds ≤ 3 ms at p50 and ≤ 10 ms at p99.
"""

from __future__ import annotations

import argparse
import os
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

from _servers import machine, quantile  # noqa: E402
from guard_bench import served  # noqa: E402

from support.mcp_harness import AGENT, git_upstream, make_repo, proxy_parameters  # noqa: E402

BEFORE = "676c575"  # main before #12's one round trip: the 3-trip gateway

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


def proxy_before(root: Path, url: str, api_key: str, repo: Path) -> StdioServerParameters:
    """The proxy of the `--before` sources: the gateway and SDK as they were, same interpreter and deps."""
    parameters = proxy_parameters(url, api_key, "--name", "git", upstream=git_upstream(repo))
    return StdioServerParameters(
        command=sys.executable,
        args=["-c", "from keyturn.entry import main; main()", *parameters.args],
        env={**(parameters.env or {}), "PYTHONPATH": str(root / "src")},
    )


def checkout(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True)
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def row(backend: str, name: str, startups: list[float], latencies: list[float], floor: list[float]) -> str:
    ms, base = sorted(x * 1000 for x in latencies), sorted(x * 1000 for x in floor)
    p50, p99 = quantile(ms, 0.5), quantile(ms, 0.99)
    added = f"+{p50 - quantile(base, 0.5):.1f} | +{p99 - quantile(base, 0.99):.1f}"
    return f"| {backend} | {name} | {statistics.median(startups):.2f} s | {p50:.1f} | {p99:.1f} | {added} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default=BEFORE, help="the git ref whose proxy is the 3-trip reference")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("KEYTURN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    started_at, load_before = datetime.now(UTC), os.getloadavg()[0]
    table: list[str] = []
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        repo = make_repo(work / "repo")
        before = checkout(args.before, work / "before")
        backends = [("SQLite", None)] + ([] if args.no_postgres else [("PostgreSQL", args.postgres)])
        for backend, base in backends:
            with served(work / backend, base, POLICY) as server:
                key = server.tokens[AGENT]
                setups = {
                    "direct: mcp-server-git": StdioServerParameters(
                        command=sys.executable, args=git_upstream(repo)[1:]
                    ),
                    "proxied, one trip (execute)": proxy_parameters(
                        server.url, key, "--name", "git", upstream=git_upstream(repo)
                    ),
                    "proxied, 3 trips (before #12)": proxy_before(before, server.url, key, repo),
                }
                startups: dict[str, list[float]] = {name: [] for name in setups}
                latencies: dict[str, list[float]] = {name: [] for name in setups}
                for _ in range(args.rounds):
                    for name, parameters in setups.items():
                        startup, samples = anyio.run(measure, parameters, repo, args.samples)
                        startups[name].append(startup)
                        latencies[name] += samples
            direct = latencies["direct: mcp-server-git"]
            table += [row(backend, name, startups[name], latencies[name], direct) for name in setups]
    lines = [
        "# MCP gateway: overhead of an allowed tool call",
        "",
        f"{started_at:%Y-%m-%d %H:%M} UTC · {machine()} · load average {load_before:.1f} at the start",
        "",
        f"`benchmarks/mcp_bench.py --samples {args.samples} --rounds {args.rounds} --before {args.before}`:",
        "`git_status` on a temporary repository, one call at a time from the official MCP ClientSession;",
        "the set-ups take turns (a round each), through one real `keyturn serve` per database. *added* is",
        "over the direct call at the same percentile.",
        "",
        "| database | set-up | start-up (initialize answered) | p50 ms | p99 ms | added p50 | added p99 |",
        "|---|---|---|---|---|---|---|",
        *table,
        "",
        "Goal (#12): the proxy adds ≤ 3 ms at p50 and ≤ 10 ms at p99 to an allowed call.",
        "",
    ]
    out = ROOT / "benchmarks" / "results" / "mcp.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
