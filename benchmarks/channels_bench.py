"""Channel delivery: submit → delivery received, dispatcher throughput, and what the outbox adds to a submit.

Real `keyturn serve` processes and a real Standard Webhooks receiver on loopback (tests/support):

  (a) latency      submit a `db.export` routed to the channel target, one at a time; t0 is when the
                   submit's HTTP response is back, t1 when the receiver has the delivery. Latency = t1 - t0
                   (negative: delivered before the submit's own answer arrived). SQLite (one server) and
                   PostgreSQL (two replicas: submit on one, both dispatching).
  (b) throughput   N requests stored through the real service (outbox rows included) while no server runs;
                   then the server(s) start and the receiver counts: deliveries/s from the first arrival to
                   the last. One replica (SQLite, PostgreSQL) and two replicas (PostgreSQL).
  (c) submit cost  the same HTTP submit with a notify target and without one (a rule that notifies no one),
                   interleaved, on one SQLite server whose dispatcher is running: what the outbox row (and
                   the delivery work beside it) costs the agent.

The channel is pluggable (`SINKS`): the webhook receiver, and the tests' fake Slack Web API driven by the
server's real slack_sdk client (t1: the fake stored the card of `chat.postMessage`). `--rows 0` skips (b).

    .venv/bin/python benchmarks/channels_bench.py [--samples 200] [--rows 5000] [--sinks slack webhook]

Writes benchmarks/results/channels.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy import text, update

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _servers import machine, postgres_schema, quantile  # noqa: E402

from keyturn.channels.runtime import install_planner  # noqa: E402
from keyturn.channels.slack import APPROVE  # noqa: E402
from keyturn.config import load_settings  # noqa: E402
from keyturn.model import Principal, PrincipalKind  # noqa: E402
from keyturn.policy import PolicyHolder  # noqa: E402
from keyturn.server.startup import key_encryption_key, open_keyring  # noqa: E402
from keyturn.service import Keyturn, Submission  # noqa: E402
from keyturn.store import Store  # noqa: E402
from keyturn.store.schema import outbox  # noqa: E402
from support.channels import policy, webhook_settings  # noqa: E402
from support.fake_slack import FakeSlack  # noqa: E402
from support.live import LiveServer, free_port, start_server  # noqa: E402
from support.webhook_receiver import WebhookReceiver  # noqa: E402

AGENT = "agent:deploy-bot"
ROUTED = "db.export"  # notify: ["webhook:siem"] in the policy of tests/support/channels.py
QUIET = "quiet.thing"  # the same kind of review route, notifying no one


class Sink(Protocol):
    """A channel under measurement: the settings that point a target at it, and what it received."""

    name: str

    def settings(self, workdir: Path) -> dict[str, Any]: ...

    def arrivals(self) -> dict[str, float]:
        """request id -> perf_counter() when its first delivery arrived."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...


class WebhookSink:
    name = "webhook"
    target = "webhook:siem"

    def __init__(self, verify: bool = True) -> None:
        self.receiver = WebhookReceiver(verify=verify).start()
        # the receiver stamps time.time(); convert once to the perf_counter timeline of the submits
        self._offset = time.perf_counter() - time.time()

    def settings(self, workdir: Path) -> dict[str, Any]:
        return webhook_settings(workdir, {"siem": self.receiver, "oncall": self.receiver})

    def arrivals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.receiver.accepted():
            out.setdefault(r.json["data"]["id"], r.at + self._offset)
        return out

    def count(self) -> int:
        return len(self.receiver.accepted())

    def first_last(self) -> tuple[float, float]:
        got = self.receiver.accepted()
        return got[0].at, got[-1].at

    def close(self) -> None:
        self.receiver.stop()


class SlackSink:
    """The fake Slack Web API of the tests, driven by the server's real slack_sdk client: a delivery is the
    card's `chat.postMessage`, stamped when the fake stored the message."""

    name = "slack"
    target = "slack:#ops-approvals"
    token = "xoxb-1234-5678-keyturnbench"

    def __init__(self) -> None:
        self.fake = FakeSlack(token=self.token).start()

    def settings(self, workdir: Path) -> dict[str, Any]:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "slack-token").write_text(self.token + "\n")
        (workdir / "slack-secret").write_text(secrets.token_hex(16) + "\n")
        slack = {
            "bot_token": {"file": str(workdir / "slack-token")},
            "signing_secret": {"file": str(workdir / "slack-secret")},
            "api_url": self.fake.api_url,
        }
        return {"channels": {"slack": slack}}

    def arrivals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for call in self.fake.ok_calls("chat.postMessage"):
            request_id = _card_request(call.args.get("blocks"))
            if request_id is not None:
                out.setdefault(request_id, call.at)
        return out

    def count(self) -> int:
        return len(self.fake.ok_calls("chat.postMessage"))

    def close(self) -> None:
        self.fake.stop()


def _card_request(blocks: Any) -> str | None:
    """The request id a card's Approve button carries."""
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    for block in blocks or []:
        for element in block.get("elements", []) if isinstance(block, dict) else []:
            if isinstance(element, dict) and element.get("action_id") == APPROVE:
                return str(element["value"])
    return None


SINKS: dict[str, type[WebhookSink] | type[SlackSink]] = {"webhook": WebhookSink, "slack": SlackSink}


def sink_policy(sink: Any) -> str:
    """The channel tests' policy with its targets pointed at the sink (`db.export` notifies it)."""
    return policy().replace("webhook:siem", sink.target).replace("webhook:oncall", sink.target)


def stats(values: list[float], digits: int) -> str:
    return " | ".join(
        f"{x:.{digits}f}" for x in (statistics.median(values), quantile(values, 0.9), quantile(values, 0.99))
    )


def latency(server: LiveServer, submit_url: str, sink: Any, samples: int) -> list[float]:
    out = []
    with httpx.Client(base_url=submit_url, headers=server.headers(AGENT), timeout=30) as client:
        for i in range(samples):
            response = client.post(
                "/v1/actions", json={"action": ROUTED, "resource": f"t{i}", "params": {"rows": i}}
            )
            t0 = time.perf_counter()
            rid = response.json()["id"]
            deadline = time.monotonic() + 10
            while rid not in (arrived := sink.arrivals()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"request {rid} was not delivered within 10 s")
                time.sleep(0.001)
            out.append((arrived[rid] - t0) * 1000)
    return out


def fill(server: LiveServer, rows: int) -> None:
    """Store `rows` routed requests through the real service, outbox rows included, with no server running."""
    settings = load_settings(server.config_path)
    store = Store.open(settings.database)
    try:
        keyring = open_keyring(settings, store, key_encryption_key(settings))
        svc = Keyturn(settings, store, PolicyHolder(settings.policy), keyring)
        install_planner(settings, store, svc.redactor)
        agent = Principal(id=AGENT, kind=PrincipalKind.AGENT, groups=frozenset({"bots"}))
        for i in range(rows):
            svc.submit(agent, Submission(action=ROUTED, resource=f"t{i}", params={"rows": i}))
    finally:
        store.close()


def hold(database_url: str, until: datetime) -> None:
    """Make every pending row due at `until`, and wake the dispatchers (PostgreSQL NOTIFY; SQLite's finds
    out within its idle poll, which the throughput, measured from the first arrival, does not include)."""
    store = Store.open(database_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(update(outbox).where(outbox.c.status == "pending").values(due_at=until))
            if store.backend == "postgresql":
                conn.execute(text("SELECT pg_notify('keyturn_changes', 'bench')"))
    finally:
        store.close()


@dataclass
class CountingReceiver:
    """benchmarks/counting_receiver.py in its own process: counts deliveries, first and last arrival."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @classmethod
    def start(cls) -> CountingReceiver:
        port = free_port()
        script = ROOT / "benchmarks" / "counting_receiver.py"
        process = subprocess.Popen([sys.executable, str(script), str(port)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1)
                return cls(port, process)
            except httpx.TransportError:
                time.sleep(0.1)
        process.kill()
        raise RuntimeError("the counting receiver did not start")

    def stats(self) -> dict[str, float]:
        stats: dict[str, float] = httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=10).json()
        return stats

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def raw_http(rows: int) -> float:
    """The ceiling on this machine right now: httpx posting straight to the counting receiver, 16 at once."""
    receiver = CountingReceiver.start()
    try:

        async def post_all() -> None:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16)) as client:
                semaphore = asyncio.Semaphore(16)

                async def one(i: int) -> None:
                    async with semaphore:
                        body = b'{"type":"request.pending","data":{"id":"r"}}'
                        await client.post(receiver.url, content=body, headers={"webhook-id": f"msg_{i}"})

                await asyncio.gather(*(one(i) for i in range(rows)))

        asyncio.run(post_all())
        stats = receiver.stats()
        return rows / (stats["last"] - stats["first"])
    finally:
        receiver.stop()


def throughput(work: Path, database_url: str | None, rows: int, replicas: int) -> float:
    receiver = CountingReceiver.start()
    try:
        server = start_server(
            work,
            database_url=database_url,
            policy=policy(),
            settings=webhook_settings(work / "cfg", {"siem": receiver, "oncall": receiver}),  # type: ignore[dict-item]
            timeout=120,
        )
        server.stop()
        fill(server, rows)
        hold(server.database_url, datetime(2100, 1, 1, tzinfo=UTC))  # due once every replica is up
        server.start(timeout=120)
        if replicas == 2:
            server.start_replica(timeout=120)
        hold(server.database_url, datetime.now(UTC))
        deadline = time.monotonic() + 600
        while (stats := receiver.stats())["count"] < rows:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {stats['count']} of {rows} delivered in 600 s")
            time.sleep(0.2)
        server.stop()
        if stats["ids"] != rows:
            raise RuntimeError(f"{stats['count']} deliveries but {stats['ids']} distinct ids")
        return rows / (stats["last"] - stats["first"])
    finally:
        receiver.stop()


def submit_cost(server: LiveServer, samples: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {ROUTED: [], QUIET: []}
    with httpx.Client(base_url=server.url, headers=server.headers(AGENT), timeout=30) as client:
        for i in range(samples):
            for action in (ROUTED, QUIET) if i % 2 else (QUIET, ROUTED):
                started = time.perf_counter()
                response = client.post(
                    "/v1/actions", json={"action": action, "resource": f"t{i}", "params": {}}
                )
                times[action].append((time.perf_counter() - started) * 1000)
                assert response.is_success, response.text
    return times


def sink_latency(
    work: Path, sink_name: str, samples: int, postgres: str, with_cost: bool
) -> tuple[dict[str, list[float]], dict[str, list[float]] | None]:
    """(a) for one sink on SQLite and on two PostgreSQL replicas, and (c) on the SQLite server if asked."""
    lat: dict[str, list[float]] = {}
    cost = None
    sink = SINKS[sink_name]()
    try:
        config = sink.settings(work / f"{sink_name}-cfg")
        server = start_server(
            work / f"{sink_name}-lat", policy=sink_policy(sink), settings=config, timeout=120
        )
        try:
            print(f"(a) {sink_name} latency, SQLite: {samples} submits…", flush=True)
            lat[f"{sink.target}, SQLite, one server"] = latency(server, server.url, sink, samples)
            if with_cost:
                print(f"(c) submit cost: {samples} pairs…", flush=True)
                cost = submit_cost(server, samples)
        finally:
            server.stop()
        with postgres_schema(postgres) as url:
            server = start_server(
                work / f"{sink_name}-lat-pg",
                database_url=url,
                policy=sink_policy(sink),
                settings=config,
                timeout=120,
            )
            try:
                replica = server.start_replica(timeout=120)
                print(f"(a) {sink_name} latency, PostgreSQL two replicas: {samples} submits…", flush=True)
                lat[f"{sink.target}, PostgreSQL, two replicas"] = latency(server, replica.url, sink, samples)
            finally:
                server.stop()
    finally:
        sink.close()
    return lat, cost


def run(samples: int, rows: int, postgres: str, sink_names: list[str]) -> str:
    lat: dict[str, list[float]] = {}
    thr: dict[str, float] = {}
    cost: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i, name in enumerate(sink_names):
            measured, first_cost = sink_latency(work, name, samples, postgres, with_cost=i == 0)
            lat.update(measured)
            cost = first_cost or cost
        if rows:
            print(f"(b) throughput: {rows} rows…", flush=True)
            thr["raw HTTP, no keyturn (the ceiling: httpx → receiver, 16 at once)"] = raw_http(rows)
            thr["SQLite, one replica"] = throughput(work / "thr-sqlite", None, rows, 1)
            with postgres_schema(postgres) as url:
                thr["PostgreSQL, one replica"] = throughput(work / "thr-pg1", url, rows, 1)
            with postgres_schema(postgres) as url:
                thr["PostgreSQL, two replicas"] = throughput(work / "thr-pg2", url, rows, 2)
    cost_target = SINKS[sink_names[0]].target

    lat_rows = "\n".join(f"| {name} | {len(v)} | {stats(v, 1)} | {max(v):.1f} |" for name, v in lat.items())
    thr_rows = "\n".join(f"| {name} | {rows} | {v:,.0f} |" for name, v in thr.items())
    with_n, without = cost[ROUTED], cost[QUIET]
    extra = statistics.median(with_n) / statistics.median(without) - 1
    lat_goal = all(quantile(v, 0.99) <= 250 for v in lat.values())
    thr_goal = all(v >= 500 for name, v in thr.items() if not name.startswith("raw"))
    sinks = ", ".join(sink_names)
    return f"""# Channel delivery

Produced by `benchmarks/channels_bench.py` (channels: {sinks}) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC;
machine: {machine()}. Milliseconds unless said otherwise.

## (a) Submit → delivery received

| set-up | samples | p50 | p90 | p99 | max |
|---|---|---|---|---|---|
{lat_rows}

Goal p99 ≤ 250 ms after the submit's response: **{"met" if lat_goal else "NOT met"}**.

## (b) Dispatcher throughput

| set-up | rows | deliveries/s |
|---|---|---|
{thr_rows}

Goal ≥ 500 deliveries/s: **{"met" if thr_goal else "NOT met"}**.

## (c) What the outbox adds to a submit

| submit | samples | p50 | p90 | p99 |
|---|---|---|---|---|
| with a notify target (`{cost_target}`) | {len(with_n)} | {stats(with_n, 2)} |
| without (a route that notifies no one) | {len(without)} | {stats(without, 2)} |

The outbox adds **{extra * 100:+.1f} %** to the median submit
(goal ≤ 10 %: **{"met" if extra <= 0.10 else "NOT met"}**).

- (a) submits one at a time; the dispatcher wakes on the store's change feed (PostgreSQL NOTIFY across
  replicas), so the figure is the feed's wake-up, one claim transaction, the HTTP POST and the receiver.
  Negative values would mean the delivery arrived before the submit's own answer.
- (b) fills the outbox through the real service while no server runs, then starts the server(s) and
  makes the rows due once all are up. The receiver (benchmarks/counting_receiver.py, uvicorn, its own
  process) only counts deliveries and distinct webhook-ids (each row must arrive once); every delivery
  is still signed (v1) by the server. Deliveries/s = rows / (last arrival - first). The "raw HTTP" row
  is the same receiver fed by a bare httpx client in the same run: the ceiling of the HTTP stack on this
  machine at that moment, which the dispatcher cannot beat.
- (c) interleaves the two kinds of submit on one SQLite server with its dispatcher running (the
  delivery of the routed requests competes for the same two cores, as it would in production).
- Everything (servers, receiver, client) shares this machine's two cores with other work.
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument(
        "--sinks", nargs="+", choices=sorted(SINKS), default=["slack", "webhook"], help="(c) uses the first"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("KEYTURN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "channels.md")
    args = parser.parse_args()
    report = run(args.samples, args.rows, args.postgres, args.sinks)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
