"""Console speed with 10,000 pending requests in PostgreSQL: page times, and submit → row in an open browser.

One `keyturn serve` on PostgreSQL (a schema of its own) holding 10,000 pending `db.export` requests that the
reviewer (alice, group sre) may review. Side by side in one run, interleaved round by round:

  queue page      GET /console/ as alice's session (the newest 100 reviewable requests, paged), rendered
  request page    GET /console/requests/{id} of a random pending request (history, editable params, grant)
  API queue       GET /v1/actions?status=pending&reviewable=true&limit=100: the same query as JSON (reference:
                  what rendering adds over the service call)
  API request     GET /v1/actions/{id}: the same record as JSON

Times are taken by the client over loopback (keep-alive), so they are the server's time plus a loopback
round trip (~0.2 ms): an upper bound of the server-side time. Then, in Chromium (Debian's, as the browser
tests use) with the queue page open, an agent submits; the sample is from just before the submit's HTTP
call to the moment the new row is in the page's DOM (SSE `changed` → htmx re-fetch of the rows).

    .venv/bin/python benchmarks/console_bench.py [--pending 10000] [--fetches 200] [--live 30]

Goals (issue #11): pages p95 ≤ 100 ms server-side, paged; live row ≤ 250 ms. Writes results/console.md.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from _servers import machine, postgres_schema

from keyturn import workflow
from keyturn.identity.users import set_user_password
from keyturn.model import ActionRequest, Decision, Principal, PrincipalKind, Requirement, Route, Verdict
from keyturn.store import DecisionRecord, Store

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.live import LiveServer, start_server  # noqa: E402

REVIEWER, PASSWORD = "user:alice@example.com", "alice's bench password"
AGENT = "agent:deploy-bot"
CHROMIUM = os.environ.get("KEYTURN_CHROMIUM", "/usr/bin/chromium")
# As `exports need an sre` in the default test policy decides: one sre approval, editable rows.
ROUTE = Route(
    requirements=(Requirement(groups=("sre",), count=1),), ttl=timedelta(hours=6), editable=("params.rows",)
)
VERDICT = Verdict(decision=Decision.REVIEW, route=ROUTE, policy_revision="sha256:bench")


def seed(database_url: str, count: int) -> list[str]:
    """`count` pending requests, inserted through the store as a submit writes them (with their events)."""
    requester = Principal(id=AGENT, kind=PrincipalKind.AGENT)
    store = Store.open(database_url)
    ids = []
    try:
        start = datetime.now(UTC) - timedelta(seconds=count)
        for i in range(count):
            created = start + timedelta(seconds=i)
            request = ActionRequest(
                action="db.export",
                resource=f"postgres://prod/table_{i % 50}",
                params={"rows": 10 + i, "format": "csv"},
                justification=f"report {i}",
                requester=requester,
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
                rules=["exports need an sre"],
                policy_revision="sha256:bench",
            )
            store.insert_request(transition, decision, None)
            ids.append(record.id)
    finally:
        store.close()
    return ids


def login(server: LiveServer) -> httpx.Cookies:
    answer = httpx.post(
        server.url + "/console/login",
        data={"user": REVIEWER, "password": PASSWORD, "next": "/console/"},
        headers={"Origin": server.url},
    )
    assert answer.status_code == 303, answer.text[:300]
    return answer.cookies


def page_times(
    server: LiveServer, cookies: httpx.Cookies, ids: list[str], rounds: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"queue page": [], "request page": [], "API queue": [], "API request": []}
    bearer = {"Authorization": f"Bearer {server.tokens[REVIEWER]}"}
    pick = random.Random(7)
    with (
        httpx.Client(base_url=server.url, cookies=cookies, timeout=30) as browser,
        httpx.Client(base_url=server.url, headers=bearer, timeout=30) as api,
    ):

        def timed(name: str, client: httpx.Client, path: str, marker: str) -> None:
            started = time.perf_counter()
            answer = client.get(path)
            elapsed = time.perf_counter() - started
            assert answer.status_code == 200 and marker in answer.text, (path, answer.status_code)
            times[name].append(elapsed * 1000)

        for round_ in range(rounds + 10):  # the first 10 rounds warm up and are not kept
            request_id = pick.choice(ids)
            timed("queue page", browser, "/console/", "data-request-id")
            timed("request page", browser, f"/console/requests/{request_id}", request_id)
            timed("API queue", api, "/v1/actions?status=pending&reviewable=true&limit=100", '"items"')
            timed("API request", api, f"/v1/actions/{request_id}", request_id)
            if round_ == 9:
                times = {name: [] for name in times}
    return times


def live_rows(server: LiveServer, cookies: httpx.Cookies, samples: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    latencies = []
    agent = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.tokens[AGENT]}"}, timeout=30
    )
    with sync_playwright() as playwright, agent:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-dev-shm-usage"] if os.geteuid() == 0 else [],
        )
        try:
            context = browser.new_context()
            context.add_cookies(
                [{"name": c.name, "value": c.value or "", "url": server.url} for c in cookies.jar]
            )
            page = context.new_page()
            page.goto(server.url + "/console/")
            page.wait_for_selector("tr[data-request-id]")
            time.sleep(1.0)  # the SSE stream connects
            for i in range(samples):
                started = time.perf_counter()
                made = agent.post(
                    "/v1/actions",
                    json={"action": "db.export", "resource": "postgres://prod/live", "params": {"rows": i}},
                )
                made.raise_for_status()
                page.wait_for_selector(f"tr[data-request-id='{made.json()['id']}']", timeout=30_000)
                latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.3)  # a human-paced stream of submits, not a burst
        finally:
            browser.close()
    return latencies


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"n": len(ordered), "p50": statistics.median(ordered), "p95": cuts[94], "max": ordered[-1]}


def run(pending: int, fetches: int, live: int, postgres: str) -> str:
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp, postgres_schema(postgres) as url:
        server = start_server(Path(tmp) / "pg", database_url=url)
        try:
            set_user_password(server.workdir / "users.yaml", REVIEWER, PASSWORD)
            print(f"seeding {pending} pending requests…", flush=True)
            seeded = time.perf_counter()
            ids = seed(url, pending)
            print(f"  {time.perf_counter() - seeded:.1f} s", flush=True)
            cookies = login(server)
            print(f"{fetches} rounds of the four pages…", flush=True)
            pages = {name: stats(v) for name, v in page_times(server, cookies, ids, fetches).items()}
            print(f"{live} live rows in Chromium…", flush=True)
            row = stats(live_rows(server, cookies, live))
        finally:
            server.stop()
    return report(pages, row, pending, started)


def report(pages: dict[str, dict[str, float]], row: dict[str, float], pending: int, started: datetime) -> str:
    lines = "\n".join(
        f"| {name} | {int(s['n'])} | {s['p50']:.1f} | {s['p95']:.1f} | {s['max']:.1f} |"
        for name, s in pages.items()
    )
    pages_met = all(pages[name]["p95"] <= 100 for name in ("queue page", "request page"))
    return f"""# Console benchmark (benchmarks/console_bench.py)

**Run**: {started:%Y-%m-%d %H:%M} UTC; {machine()}. PostgreSQL 15 on loopback, {pending:,} pending
requests reviewable by the reviewer; one `keyturn serve`.

## Pages (ms, measured by the client over loopback: server time + a loopback round trip)

| page | fetches | p50 | p95 | max |
|---|---|---|---|---|
{lines}

Goal: queue and request pages p95 ≤ 100 ms: **{"met" if pages_met else "not met"}**. The API rows are the
same service calls as JSON, fetched in the same rounds: the difference is what the console's rendering adds.

## Live row (ms): agent's submit → the row in the reviewer's open queue page (Chromium)

| samples | p50 | p95 | max |
|---|---|---|---|
| {int(row["n"])} | {row["p50"]:.1f} | {row["p95"]:.1f} | {row["max"]:.1f} |

Goal ≤ 250 ms: **{"met" if row["p95"] <= 250 else "not met"}** (p95). A sample includes the submit itself (a
durable transaction), the database notification, the SSE `changed` event, htmx's re-fetch of the queue rows
(the same query as the queue page) and the DOM swap.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--fetches", type=int, default=200)
    parser.add_argument("--live", type=int, default=30)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("KEYTURN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    text = run(args.pending, args.fetches, args.live, args.postgres)
    print(text)
    (Path(__file__).parent / "results" / "console.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
