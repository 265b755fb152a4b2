"""The allowed path as an agent sees it: `Gate.guard` around a no-op, side by side in one run with

  noop       the bare function call (the floor: what the agent pays without keyturn)
  bare HTTP  one `GET /healthz` to the same server over the same client (one round trip, no database)
  one trip   `Gate.guard` today: submit with `execute: true` (decision, grant and its consumption in one
             durable write), the function, the outcome reported by the background sender
  3 trips    what `Gate.guard` did before (#12): submit, consume the grant, run, report the outcome, each
             its own HTTP round trip and durable write, made here with the SDK's low-level calls

Samples are interleaved (one of each in turn), so a loaded machine slows every column alike: read the
ratios. A real `keyturn serve` on SQLite, then on PostgreSQL (`KEYTURN_TEST_POSTGRES_URL`).

    .venv/bin/python benchmarks/guard_bench.py [--samples 300] [--postgres URL] [--no-postgres]

Writes benchmarks/results/guard.md. Goal (#12): one trip adds ≤ 3 ms at p50 and ≤ 10 ms at p99 over noop.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _servers import machine, postgres_schema, quantile  # noqa: E402

from keyturn import Gate  # noqa: E402
from support.live import LiveServer, start_server  # noqa: E402

AGENT = "agent:deploy-bot"
ACTION = "bench.noop"
POLICY = f"""\
version: 1
defaults: {{decision: review, approvers: [security], ttl: 1h}}
rules:
  - name: the benchmark's no-op is free
    match: {{action: {ACTION}}}
    decision: allow
"""
COLUMNS = ("noop", "bare HTTP", "one trip", "3 trips")


def noop(n: int) -> int:
    return n


def three_trips(gate: Gate, n: int) -> int:
    """The pre-#12 `Gate.guard`: submit, consume, run, report, one round trip after another."""
    view = gate.submit(ACTION, params={"n": n})
    consumed = gate.consume(view["grant"])
    value = noop(**consumed["params"])
    gate.report(view["id"], True)
    return value


def measure(url: str, token: str, samples: int) -> dict[str, list[float]]:
    with Gate(url, token) as gate:
        guarded = gate.guard(ACTION)(noop)
        calls: dict[str, Callable[[int], object]] = {
            "noop": noop,
            "bare HTTP": lambda n: gate._http.get("/healthz").raise_for_status(),
            "one trip": guarded,
            "3 trips": lambda n: three_trips(gate, n),
        }
        for n in range(10):  # warm-up: connections, caches, the background sender's thread
            for call in calls.values():
                call(n)
        latencies: dict[str, list[float]] = {name: [] for name in calls}
        for n in range(samples):
            for name, call in calls.items():
                started = time.perf_counter()
                call(n)
                latencies[name].append(time.perf_counter() - started)
        assert gate.flush(60), "the background reports did not land"
    return latencies


def rows(backend: str, latencies: dict[str, list[float]]) -> list[str]:
    ms = {name: sorted(x * 1000 for x in values) for name, values in latencies.items()}
    floor50, floor99 = quantile(ms["noop"], 0.5), quantile(ms["noop"], 0.99)
    out = []
    for name in COLUMNS:
        p50, p99 = quantile(ms[name], 0.5), quantile(ms[name], 0.99)
        out.append(
            f"| {backend} | {name} | {p50:.2f} | {p99:.2f} | +{p50 - floor50:.2f} | +{p99 - floor99:.2f} "
            f"| {p50 / quantile(ms['bare HTTP'], 0.5):.2f}x |"
        )
    return out


@contextmanager
def served(work: Path, postgres_base: str | None, policy: str) -> Iterator[LiveServer]:
    """A real `keyturn serve` on SQLite (`postgres_base` None) or in a fresh PostgreSQL schema."""
    with ExitStack() as stack:
        url = None if postgres_base is None else stack.enter_context(postgres_schema(postgres_base))
        server = start_server(work, database_url=url, policy=policy, timeout=120)
        stack.callback(server.stop)
        yield server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("KEYTURN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    started_at = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    table: list[str] = []
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        backends = [("SQLite", None)] + ([] if args.no_postgres else [("PostgreSQL", args.postgres)])
        for backend, base in backends:
            with served(work / backend, base, POLICY) as server:
                table += rows(backend, measure(server.url, server.tokens[AGENT], args.samples))
    lines = [
        "# The allowed path as an agent sees it: `Gate.guard` around a no-op",
        "",
        f"{started_at:%Y-%m-%d %H:%M} UTC · {machine()} · load average {load_before:.1f} at the start",
        "",
        f"`benchmarks/guard_bench.py --samples {args.samples}`: one call at a time, the four set-ups",
        "interleaved; a real `keyturn serve` (one process) on loopback. *added* is over the bare no-op;",
        "*x bare* is p50 over one bare HTTP round trip to the same server.",
        "",
        "| database | set-up | p50 ms | p99 ms | added p50 | added p99 | x bare |",
        "|---|---|---|---|---|---|---|",
        *table,
        "",
        "Goal (#12): one trip adds ≤ 3 ms at p50 and ≤ 10 ms at p99.",
        "",
    ]
    out = ROOT / "benchmarks" / "results" / "guard.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
