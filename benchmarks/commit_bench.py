"""Group commit benchmark: durable submits per second through the real store, from 1, 16 and 64 threads,
group-committed (`store.group_commit: true`, the default) against one transaction per write (`false`, the
path before issue #12), side by side in one run on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/commit_bench.py [--seconds 3] [--threads 1 16 64] [--postgres URL]

A submit is what `Store.insert_request` writes for an allowed request: the request row, its grant, its
decision record and 3 ledger events, durable when it returns (SQLite WAL with synchronous=FULL, PostgreSQL
with synchronous_commit on). The two modes alternate for each thread count, on the same database, so a
loaded machine slows both alike; read the figures as ratios. "per commit" is how many submits shared one
commit on average (counted with an SQLAlchemy `commit` event).
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy import event

from keyturn import workflow
from keyturn.model import ActionRequest, Decision, Principal, PrincipalKind, Verdict
from keyturn.store import DecisionRecord, Store

AGENT = Principal(id="agent:bench", kind=PrincipalKind.AGENT)
ALLOW = Verdict(decision=Decision.ALLOW, policy_revision="sha256:bench")


@dataclass(frozen=True)
class Result:
    submits: int
    errors: int
    seconds: float
    commits: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.submits / self.seconds


def submit(store: Store, worker: int, n: int) -> None:
    now = datetime.now(UTC)
    request = ActionRequest(action="db.export", resource=f"bench/{worker}/{n}", requester=AGENT)
    suffix = secrets.token_hex(6)
    transition = workflow.submit(f"req_{suffix}", request, ALLOW, now, f"gr_{suffix}")
    decision = DecisionRecord(
        ts=now,
        request_id=transition.record.id,
        request_digest="sha256:" + "0" * 64,
        decision="allow",
        rules=[],
        policy_revision=ALLOW.policy_revision,
    )
    store.insert_request(transition, decision, None)


def measure(url: str, threads: int, seconds: float, *, group_commit: bool) -> Result:
    store = Store.open(url, group_commit=group_commit)
    commits = [0]

    def counted(_: object) -> None:
        commits[0] += 1

    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def work(worker: int) -> None:
        start.wait()
        n = 0
        while not stop.is_set():
            began = time.perf_counter()
            try:
                submit(store, worker, n)
            except Exception:
                errors[worker] += 1
                continue
            latencies[worker].append(time.perf_counter() - began)
            n += 1

    try:
        submit(store, -1, 0)  # warm the pool (and start the writer thread)
        event.listen(store.engine, "commit", counted)
        pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
        for thread in pool:
            thread.start()
        start.wait()
        began = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for thread in pool:
            thread.join()
        elapsed = time.perf_counter() - began
    finally:
        store.close()
    every = sorted(x for per in latencies for x in per)
    return Result(
        submits=len(every),
        errors=sum(errors),
        seconds=elapsed,
        commits=commits[0],
        p50_ms=1000 * every[len(every) // 2] if every else float("nan"),
        p99_ms=1000 * every[min(len(every) - 1, int(len(every) * 0.99))] if every else float("nan"),
    )


def postgres_schema(base: str) -> tuple[str, str]:
    schema = "bench_" + secrets.token_hex(4)
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument(
        "--postgres",
        default=os.environ.get("KEYTURN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "commit.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backends:
            schema = None
            if backend == "sqlite":
                url = f"sqlite:///{Path(folder) / 'bench.db'}"
            else:
                url, schema = postgres_schema(args.postgres)
            try:
                with Store.open(url) as setup:
                    setup.upgrade()
                for threads in args.threads:
                    results = {
                        mode: measure(url, threads, args.seconds, group_commit=mode) for mode in (False, True)
                    }
                    plain, grouped = results[False], results[True]
                    for label, result in (("one commit each", plain), ("**group commit**", grouped)):
                        line = (
                            f"| {backend} | {threads} | {label} | {result.rate:,.0f} | "
                            f"{result.p50_ms:.1f} | {result.p99_ms:.1f} | "
                            f"{result.submits / max(result.commits, 1):.1f} | {result.errors} |"
                        )
                        rows.append(line)
                        print(line, flush=True)
                    ratio = (
                        f"| {backend} | {threads} | ratio | **{grouped.rate / plain.rate:.2f}x** | | | | |"
                    )
                    rows.append(ratio)
                    print(ratio, flush=True)
            finally:
                if schema is not None:
                    with psycopg.connect(args.postgres, autocommit=True) as admin:
                        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    load_after = os.getloadavg()
    report = "\n".join(
        [
            "# Group commit",
            "",
            f"{started:%Y-%m-%d %H:%M} UTC, {platform.machine()} with {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}; load average (1 min) {load_before[0]:.2f} at start, "
            f"{load_after[0]:.2f} at end; {args.seconds:g} s per cell, the two modes alternating.",
            "",
            "Submits through `Store.insert_request` (request, grant, decision record, 3 ledger events; "
            "durable on return).",
            "",
            "| backend | threads | mode | submits/s | p50 ms | p99 ms | submits per commit | errors |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    args.out.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
