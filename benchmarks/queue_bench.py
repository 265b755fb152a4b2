"""Review-queue benchmark (issue #12): one page of a reviewer's queue at 1k, 100k and 1M stored requests.

    .venv/bin/python benchmarks/queue_bench.py [--sizes 1000,100000,1000000] [--postgres URL] [--seconds 2]

At each size a fresh database (SQLite file in WAL mode; a fresh PostgreSQL schema) holds:
- half the requests pending but routed to another group ("other": what this reviewer cannot review),
- half decided (approved) and routed to the reviewer's group "sre" (what the group has already handled),
- 100 requests pending for "sre", spread evenly through time among the rest.
Rows go straight into the tables in bulk (what `insert_request` would write for them: the request row,
its `request_groups` rows and, for pending ones, its `pending_route_groups` rows), then PostgreSQL is
ANALYZEd (as its autovacuum would). Every row carries a real `RequestRecord` JSON of typical size.

Three queue reads, each `Store.list_requests(status=pending, reviewable_groups=…, limit=50)`-shaped, page
parsed into records:
- a reviewer whose groups match nothing ({"dba"}): the page is empty;
- the first page of {"sre"} (50 of its 100);
- the second page of {"sre"} (through the cursor).
"old" is the query before #12 (the requests' (status, created_at, id) index filtered by an EXISTS on
`request_groups`, which the store still uses for listings that are not the queue); "new" reads
`pending_route_groups`. Both run in the same process on the same database, interleaved, so the machine's
load hits both alike. Goal: "new" flat within 2x from 1k to 1M.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Select, insert, text

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
from keyturn.store import Store
from keyturn.store import store as store_module
from keyturn.store.schema import pending_route_groups, request_groups, requests

LIMIT = 50
OWN_PENDING = 100
BATCH = 20_000
AGENT = Principal(id="agent:bench", kind=PrincipalKind.AGENT)
BASE = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _template(group: str) -> str:
    """A real record's JSON with the id as a placeholder (ids differ per row; the rest may repeat)."""
    route = Route(requirements=(Requirement(groups=(group,)),), ttl=dt.timedelta(hours=1))
    verdict = Verdict(decision=Decision.REVIEW, route=route, policy_revision="sha256:bench")
    request = ActionRequest(
        action="db.export",
        resource="postgres://prod/customers",
        params={"rows": 5000, "table": "customers", "columns": ["id", "email", "country"]},
        justification="quarterly report for the finance team",
        requester=AGENT,
        context={"model": "claude", "session": "s-123", "ticket": "FIN-42"},
    )
    record = workflow.submit("req_PLACEHOLDER", request, verdict, BASE, "gr_PLACEHOLDER").record
    return record.model_dump_json()


def _rows(size: int) -> Iterator[tuple[str, str, str, dt.datetime]]:
    """(id, status, group, created_at) for `size` requests, the reviewer's 100 pending spread evenly."""
    every = max(size // OWN_PENDING, 1)
    own = 0
    for i in range(size):
        created = BASE + dt.timedelta(milliseconds=10 * i)
        if i % every == every // 2 and own < OWN_PENDING:
            own += 1
            yield f"req_sre_p_{i:08d}", "pending", "sre", created
        elif i % 2:
            yield f"req_oth_p_{i:08d}", "pending", "other", created
        else:
            yield f"req_sre_d_{i:08d}", "approved", "sre", created


def populate(store: Store, size: int) -> float:
    """Bulk-insert the mix; returns the seconds it took."""
    templates = {g: _template(g) for g in ("sre", "other")}
    start = time.perf_counter()
    batch: list[tuple[str, str, str, dt.datetime]] = []

    def flush() -> None:
        with store.engine.begin() as conn:
            conn.execute(
                insert(requests),
                [
                    {
                        "id": rid,
                        "status": status,
                        "action": "db.export",
                        "resource": "postgres://prod/customers",
                        "requester": AGENT.id,
                        "created_at": created,
                        "updated_at": created,
                        "version": 1 if status == "pending" else 2,
                        "record": templates[group].replace("req_PLACEHOLDER", rid),
                    }
                    for rid, status, group, created in batch
                ],
            )
            conn.execute(insert(request_groups), [{"request_id": r[0], "group": r[2]} for r in batch])
            pending = [
                {"group": group, "created_at": created, "request_id": rid}
                for rid, status, group, created in batch
                if status == "pending"
            ]
            if pending:
                conn.execute(insert(pending_route_groups), pending)
        batch.clear()

    for row in _rows(size):
        batch.append(row)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    if store.backend == "postgresql":
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - start


def old_query(groups: set[str], after: tuple[dt.datetime, str] | None, limit: int) -> Select[Any] | None:
    return store_module._listing_query(Status.PENDING, None, groups, after, limit)


def new_query(groups: set[str], after: tuple[dt.datetime, str] | None, limit: int) -> Select[Any] | None:
    return store_module._review_queue_query(groups, after, limit)


Builder = Callable[[set[str], "tuple[dt.datetime, str] | None", int], "Select[Any] | None"]


def read_page(
    store: Store, build: Builder, groups: set[str], after: tuple[dt.datetime, str] | None
) -> tuple[list[RequestRecord], tuple[dt.datetime, str] | None]:
    """What `Store.list_requests` does with a query: run it, parse the page, make the next cursor."""
    query = build(groups, after, LIMIT)
    assert query is not None
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    page = rows[:LIMIT]
    records = [RequestRecord.model_validate_json(row.record) for row in page]
    return records, ((page[-1].created_at, page[-1].id) if len(rows) > LIMIT else None)


def measure(store: Store, seconds: float) -> list[tuple[str, float, float, float, float, int]]:
    """(case, old median ms, new median ms, old best, new best, runs each) for the three queue reads,
    interleaved. The best run is what the query costs when no other process takes the CPU mid-way."""
    first_sre, cursor = read_page(store, new_query, {"sre"}, None)
    old_first, old_cursor = read_page(store, old_query, {"sre"}, None)
    assert [r.id for r in first_sre] == [r.id for r in old_first] and cursor == old_cursor
    assert len(first_sre) == LIMIT and cursor is not None
    nothing = {"dba"}
    for build in (old_query, new_query):
        assert read_page(store, build, nothing, None) == ([], None)
    cases: list[tuple[str, set[str], tuple[dt.datetime, str] | None]] = [
        ("groups match nothing (empty page)", nothing, None),
        ("own group, first page of 50", {"sre"}, None),
        ("own group, second page (cursor)", {"sre"}, cursor),
    ]
    results = []
    for name, groups, after in cases:
        timings: dict[str, list[float]] = {"old": [], "new": []}
        deadline = time.perf_counter() + seconds
        while len(timings["old"]) < 5 or (time.perf_counter() < deadline and len(timings["old"]) < 300):
            for kind, build in (("old", old_query), ("new", new_query)):
                start = time.perf_counter()
                read_page(store, build, groups, after)
                timings[kind].append((time.perf_counter() - start) * 1000)
        results.append(
            (
                name,
                statistics.median(timings["old"]),
                statistics.median(timings["new"]),
                min(timings["old"]),
                min(timings["new"]),
                len(timings["old"]),
            )
        )
    return results


@contextmanager
def sqlite_store(work: Path, size: int) -> Iterator[Store]:
    path = work / f"queue-{size}.db"
    with Store.open(f"sqlite:///{path}") as store:
        store.upgrade()
        yield store
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextmanager
def postgres_store(base_url: str) -> Iterator[Store]:
    import psycopg

    schema = f"kt_queue_bench_{secrets.token_hex(4)}"
    with psycopg.connect(base_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base_url else "?"
    try:
        with Store.open(f"{base_url}{sep}options=-csearch_path%3D{schema}") as store:
            store.upgrade()
            yield store
    finally:
        with psycopg.connect(base_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("KEYTURN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case and size (both queries)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "queue.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in load_before)}")
    work = Path(tempfile.mkdtemp(prefix="kt-queue-bench-"))
    table: list[str] = []
    generation: list[str] = []
    try:
        for backend in args.backends.split(","):
            by_case: dict[str, list[tuple[int, float, float, float, float, int]]] = {}
            for size in sizes:
                opener = sqlite_store(work, size) if backend == "sqlite" else postgres_store(args.postgres)
                with opener as store:
                    took = populate(store, size)
                    load = os.getloadavg()[0]
                    print(f"{backend} {size:,}: generated in {took:.1f} s (load {load:.2f})")
                    generation.append(f"{backend}, {size:,} requests: {took:.1f} s (load {load:.2f})")
                    for name, old_ms, new_ms, old_best, new_best, runs in measure(store, args.seconds):
                        print(f"  {name}: old {old_ms:.2f} ms, new {new_ms:.2f} ms ({runs} runs each)")
                        by_case.setdefault(name, []).append((size, old_ms, new_ms, old_best, new_best, runs))
            for name, figures in by_case.items():
                small_new, small_old = figures[0][2], figures[0][1]
                for size, old_ms, new_ms, old_best, new_best, runs in figures:
                    table.append(
                        f"| {backend} | {name} | {size:,} | {old_ms:.2f} ({old_ms / small_old:.1f}x) | "
                        f"{new_ms:.2f} ({new_ms / small_new:.1f}x) | {old_ms / new_ms:.1f}x | "
                        f"{old_best:.2f} / {new_best:.2f} | {runs} |"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout
    lines = [
        "# Review-queue benchmark",
        "",
        f"Machine: {os.cpu_count()} CPUs (nproc), {cpu.split(':', 1)[-1].strip() or platform.processor()}; "
        f"Python {platform.python_version()}; {started:%Y-%m-%d %H:%M}-{dt.datetime.now(dt.UTC):%H:%M} UTC.",
        f"Load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load_before)} at the start, "
        f"{', '.join(f'{x:.2f}' for x in load_after)} at the end (2 cores shared with other work).",
        f"Command: `.venv/bin/python benchmarks/queue_bench.py --sizes {args.sizes} --backends "
        f"{args.backends} --seconds {args.seconds}`",
        "",
        "Mix at each size: half pending for another group, half decided in the reviewer's group, and 100",
        "pending for the reviewer's group spread through time. Page size 50. Median ms per page read (query",
        "plus parsing the page), old and new interleaved on the same database; (nx) is the ratio to the",
        "smallest size of the same column.",
        "",
        "| backend | queue read | requests | old ms | new ms | old / new | best old / new ms | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *table,
        "",
        "Generation (bulk inserts straight into the tables, plus ANALYZE on PostgreSQL):",
        "",
        *[f"- {g}" for g in generation],
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
