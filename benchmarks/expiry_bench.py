"""Expiry benchmark: N thousand requests due at the same instant; how late does the last one expire?

    .venv/bin/python benchmarks/expiry_bench.py [--requests 5000] [--postgres URL] [--load-threads 4]

Through the real `Store` and `workflow.due_transition`, swept the way the server's timer does
(`Keyturn.tick` every `timer_interval` = 1 s), while `--load-threads` threads keep submitting new requests
(the "under load" of issue #13 §5). Two sweeps are compared on the same data, in the same run:

- batched (now): `process_due` takes 200 due requests per transaction until none is due or 5 s passed;
- reference (before #13): one transaction per due request, at most 100 per tick (`batch_size=1,
  limit=100`), i.e. what the code did before.

"Late" is measured from the instant the requests became due to the commit that expired the last one.
Fail-closed is checked too: every request ends `expired`, none approved.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy import func, select

from keyturn import workflow
from keyturn.model import (
    ActionRequest,
    Decision,
    Principal,
    PrincipalKind,
    RequestRecord,
    Requirement,
    Route,
    Status,
    Verdict,
)
from keyturn.store import DecisionRecord, Store
from keyturn.store.schema import requests

AGENT = Principal(id="agent:bench", kind=PrincipalKind.AGENT)
TICK = 1.0
ROUTE = Route(requirements=(Requirement(groups=("sre",), count=1),), ttl=timedelta(minutes=5))
VERDICT = Verdict(decision=Decision.REVIEW, route=ROUTE, policy_revision="sha256:bench")


def new_request(created: datetime) -> tuple[workflow.Transition, DecisionRecord]:
    request = ActionRequest(
        action="db.export", resource="postgres://prod/x", params={"rows": 1}, requester=AGENT
    )
    transition = workflow.submit(
        "req_" + secrets.token_hex(12), request, VERDICT, created, "gr_" + secrets.token_hex(12)
    )
    record = transition.record
    decision = DecisionRecord(
        ts=created,
        request_id=record.id,
        request_digest="sha256:" + "0" * 64,
        decision="review",
        rules=["bench"],
        policy_revision="sha256:bench",
    )
    return transition, decision


@dataclass
class Run:
    label: str
    requests: int
    last_late: float
    sweeps: int
    load_submits: int
    approved: int


def run(url: str, n: int, load_threads: int, *, reference: bool) -> Run:
    store = Store.open(url)
    store.upgrade()
    try:
        created = datetime.now(UTC) - ROUTE.ttl  # due now
        for _ in range(n):
            store.insert_request(*new_request(created))
        stop = threading.Event()
        submits = [0] * load_threads

        def load(i: int) -> None:
            while not stop.is_set():
                store.insert_request(*new_request(datetime.now(UTC)))  # pending for 5 minutes: not due
                submits[i] += 1

        threads = [threading.Thread(target=load, args=(i,)) for i in range(load_threads)]
        for thread in threads:
            thread.start()
        due_at = time.monotonic()  # they are all due from now on
        sweeps = 0
        last_expiry = due_at
        try:
            while True:
                now = datetime.now(UTC)

                def handle(record: RequestRecord, now: datetime = now) -> workflow.Transition | None:
                    try:
                        return workflow.due_transition(record, now)
                    except workflow.NothingToDo:
                        return None

                if reference:
                    changed = store.process_due(now, handle, limit=100, batch_size=1)
                else:
                    changed = store.process_due(now, handle)
                sweeps += 1
                if changed:
                    last_expiry = time.monotonic()
                if remaining_due(store, now) == 0:
                    break
                time.sleep(TICK)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        with store.engine.connect() as conn:
            approved = conn.execute(
                select(func.count()).select_from(requests).where(requests.c.status == Status.APPROVED.value)
            ).scalar_one()
        return Run(
            "reference (1 per transaction, 100 per tick)" if reference else "batched (200 per transaction)",
            n,
            last_expiry - due_at,
            sweeps,
            sum(submits),
            approved,
        )
    finally:
        store.close()


def remaining_due(store: Store, now: datetime) -> int:
    with store.engine.connect() as conn:
        count: int = conn.execute(
            select(func.count()).select_from(requests).where(requests.c.next_deadline <= now)
        ).scalar_one()
    return count


def postgres_schema(base: str) -> str:
    schema = "bench_" + secrets.token_hex(4)
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--load-threads", type=int, default=4)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("KEYTURN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "expiry.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in ("sqlite", "postgresql"):
            for reference in (False, True):
                url = (
                    f"sqlite:///{Path(folder) / f'{backend}-{reference}.db'}"
                    if backend == "sqlite"
                    else postgres_schema(args.postgres)
                )
                result = run(url, args.requests, args.load_threads, reference=reference)
                line = (
                    f"| {backend} | {result.label} | {result.requests} | **{result.last_late:.2f} s** | "
                    f"{result.sweeps} | {result.load_submits} | {result.approved} |"
                )
                print(line, flush=True)
                rows.append(line)
    load_after = os.getloadavg()
    report = "\n".join(
        [
            "# Expiry under load",
            "",
            f"{started:%Y-%m-%d %H:%M} UTC, {platform.machine()} with {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}; load average {load_before[0]:.2f} at start, "
            f"{load_after[0]:.2f} at end; {args.load_threads} threads submitting throughout; "
            f"sweeps every {TICK:g} s.",
            "",
            "| backend | sweep | requests due at once | last expired after | sweeps | submits meanwhile "
            "| approved |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    args.out.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
