"""10,000 waiters on one `keyturn serve`: memory, idle CPU, wake-up latency, and an approval while they wait.

For each kind of waiter — long-poll (`GET /v1/actions/{id}/wait`) and SSE (`GET /v1/actions/{id}/events`) —
and for each code — this tree ("after") and the code before (`--before`, default the merge-base with
`main`, exported with `git archive` and run from the same virtualenv with `PYTHONPATH`) — side by side in one
run, on SQLite:

1. start a real `keyturn serve`; submit `--requests` pending requests for the idle waiters and `--wakes`
   more, one per "probe" waiter;
2. a load generator in a separate process (raw asyncio sockets, so the client costs little and does not
   share the server's CPU accounting) opens N connections (default 10,000, probes included) with the API
   keys of `--agents` agents;
3. once settled: the server's RSS (VmRSS from /proc) and its CPU over `--idle` seconds with nothing
   happening (utime+stime from /proc/<pid>/stat);
4. a reviewer approves the probes one at a time; per approval, the POST's latency, and the wake-up: from
   sending the approval to the probe's waiter receiving the decision (long-poll: its response; SSE: the
   new `state` event).

    .venv/bin/python benchmarks/waiters_bench.py [--waiters 10000] [--wakes 200] [--idle 30]
        [--before REV] [--only after] [--modes longpoll,sse]

Writes benchmarks/results/waiters.md (unless `--output -`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.live import DEFAULT_USERS, LiveServer, start_server  # noqa: E402

REVIEWER = "user:alice@example.com"
CONNECT_CONCURRENCY = 256  # connections being opened at once by the load generator
SETTLE_TIMEOUT = 120.0
WAKE_TIMEOUT = 15.0
APPROVAL_TIMEOUT = 30.0
MODES = ("longpoll", "sse")
HEADER = (
    "| waiters | code | N | RSS MiB | RSS before waiters | KiB per waiter "
    "| idle CPU % of a core ({idle:.0f} s) "
    "| wakes / missed | wake p50 ms | wake p99 ms | approval POST p50 ms | p99 ms | load generator |"
)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- the load generator (a separate process) ------------------------------------------------------------


async def _waiter(
    port: int, path: str, key: str, probe: bool, mode: str, opened: asyncio.Event, counts: dict[str, int]
) -> None:
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\nAccept: */*\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(head)
    counts["sent"] += 1
    opened.set()
    status_line = await reader.readline()
    status = status_line.split(b" ")[1].decode() if status_line else "closed"
    counts[f"status_{status}"] = counts.get(f"status_{status}", 0) + 1
    if mode == "longpoll":
        await reader.readuntil(b"\r\n\r\n")  # the response ends the wait; its body is not needed
        if probe and status == "200":
            print(f"woke {path.split('/')[3]} {time.monotonic()}", flush=True)
    else:
        states = 0
        while True:
            line = await reader.readline()
            if not line:
                counts["ended"] = counts.get("ended", 0) + 1
                return
            if line.startswith(b"event: error"):
                counts["errors"] = counts.get("errors", 0) + 1
            if line.startswith(b"event: state"):
                states += 1
                if states == 1:
                    counts["streaming"] += 1
                elif probe:
                    print(f"woke {path.split('/')[3]} {time.monotonic()}", flush=True)
                    break
    # Keep the connection (and so the server's side of it) as it is until the generator is stopped.
    await asyncio.Event().wait()


Target = tuple[str, str]  # (request id, the API key of the agent that submitted it: only it may wait)


async def _load(port: int, mode: str, waiters: int, idle: list[Target], probes: list[Target]) -> None:
    counts = {"sent": 0, "streaming": 0, "failed": 0}
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)
    suffix = "/wait?timeout=300" if mode == "longpoll" else "/events"
    tasks = []

    async def one(request_id: str, key: str, probe: bool) -> None:
        opened = asyncio.Event()
        async with semaphore:
            path = f"/v1/actions/{request_id}{suffix}"
            task = asyncio.create_task(_waiter(port, path, key, probe, mode, opened, counts))
            tasks.append(task)
            done, _ = await asyncio.wait(
                [task, asyncio.create_task(opened.wait())], return_when="FIRST_COMPLETED"
            )
            if task in done and task.exception() is not None:
                counts["failed"] += 1

    targets = [(rid, key, True) for rid, key in probes]
    targets += [(*idle[i % len(idle)], False) for i in range(waiters - len(probes))]
    await asyncio.gather(*(one(rid, key, probe) for rid, key, probe in targets))
    print(f"sent {json.dumps(counts)}", flush=True)
    while True:  # progress, until the parent stops this process
        await asyncio.sleep(1.0)
        failed = sum(1 for t in tasks if t.done() and t.exception() is not None)
        print(f"progress {json.dumps({**counts, 'failed': failed})}", flush=True)


def load_main(argv: list[str]) -> None:
    raise_fd_limit()
    spec = json.loads(argv[0])
    idle = [(rid, key) for rid, key in spec["idle"]]
    probes = [(rid, key) for rid, key in spec["probes"]]
    asyncio.run(_load(spec["port"], spec["mode"], spec["waiters"], idle, probes))


# --- the measuring side ---------------------------------------------------------------------------------


@dataclass
class Result:
    code: str
    mode: str
    waiters: int
    settled: dict[str, int] = field(default_factory=dict)
    rss_before_mib: float = 0.0
    rss_mib: float = 0.0
    idle_cpu_percent: float = 0.0
    idle_seconds: float = 0.0
    wakes_ms: list[float] = field(default_factory=list)
    approvals_ms: list[float] = field(default_factory=list)
    missed: int = 0
    note: str = ""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def server_pid(server: LiveServer) -> int:
    assert server.process is not None
    return server.process.pid


class Generator:
    """The load generator process; its `woke` lines are collected by a reader thread."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--load", json.dumps(spec)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.woke: dict[str, float] = {}
        self.woke_event = threading.Condition()
        self.progress: dict[str, int] = {}
        self.sent = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "woke":
                request_id, at = rest.split()
                with self.woke_event:
                    self.woke[request_id] = float(at)
                    self.woke_event.notify_all()
            elif kind in ("sent", "progress"):
                self.progress = json.loads(rest)
                if kind == "sent":
                    self.sent.set()

    def wait_woke(self, request_id: str, timeout: float) -> float | None:
        with self.woke_event:
            self.woke_event.wait_for(lambda: request_id in self.woke, timeout)
            return self.woke.get(request_id)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def submit_many(server: LiveServer, keys: list[str], count: int, label: str) -> list[tuple[str, str]]:
    """`count` pending requests, submitted by the agents in turn: [(request id, its agent's key)]."""
    submitted = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for index in range(count):
            key = keys[index % len(keys)]
            answer = http.post(
                "/v1/actions",
                json={"action": "db.export", "resource": "postgres://prod/bench", "params": {label: index}},
                headers={"X-API-Key": key},
            )
            answer.raise_for_status()
            submitted.append((answer.json()["id"], key))
    return submitted


def settle(server: LiveServer, generator: Generator, mode: str, waiters: int) -> None:
    """Wait until every connection was sent, SSE streams have their first state, and the server is quiet."""
    pid = server_pid(server)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    generator.sent.wait(SETTLE_TIMEOUT)
    while time.monotonic() < deadline:
        if mode == "sse" and generator.progress.get("streaming", 0) < waiters - generator.progress.get(
            "failed", 0
        ):
            time.sleep(1.0)
            continue
        before = cpu_seconds(pid)
        time.sleep(2.0)
        if cpu_seconds(pid) - before < 0.2:  # under 10 % of a core for 2 s: the opening rush is over
            return
    print(f"  not settled after {SETTLE_TIMEOUT:.0f} s: {generator.progress}", flush=True)


def measure(code: str, mode: str, server: LiveServer, args: argparse.Namespace, keys: list[str]) -> Result:
    result = Result(code, mode, args.waiters)
    pid = server_pid(server)
    idle = submit_many(server, keys, args.requests, "idle")
    probes = submit_many(server, keys, args.wakes, "probe")
    result.rss_before_mib = rss_mib(pid)
    spec = {
        "port": server.port,
        "mode": mode,
        "waiters": args.waiters,
        "idle": idle,
        "probes": probes,
    }
    generator = Generator(spec)
    try:
        started = time.monotonic()
        settle(server, generator, mode, args.waiters)
        result.settled = dict(generator.progress)
        print(f"  settled in {time.monotonic() - started:.1f} s: {result.settled}", flush=True)
        result.rss_mib = rss_mib(pid)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle)
        result.idle_seconds = time.monotonic() - t0
        result.idle_cpu_percent = 100 * (cpu_seconds(pid) - cpu0) / result.idle_seconds
        print(f"  RSS {result.rss_mib:.0f} MiB, idle CPU {result.idle_cpu_percent:.1f} %", flush=True)
        with httpx.Client(
            base_url=server.url, headers=server.headers(REVIEWER), timeout=APPROVAL_TIMEOUT
        ) as reviewer:
            for request_id, _ in probes:
                sent = time.monotonic()
                try:
                    answer = reviewer.post(f"/v1/actions/{request_id}/reviews", json={"decision": "approve"})
                    answer.raise_for_status()
                except httpx.HTTPError as exc:
                    result.missed += 1
                    detail = exc.response.text[:200] if isinstance(exc, httpx.HTTPStatusError) else ""
                    result.note = f"approval failed: {exc!r} {detail}"
                    print(f"  {result.note}", flush=True)
                    if result.missed >= 3:
                        break
                    continue
                result.approvals_ms.append((time.monotonic() - sent) * 1000)
                woke = generator.wait_woke(request_id, WAKE_TIMEOUT)
                if woke is None:
                    result.missed += 1
                else:
                    result.wakes_ms.append((woke - sent) * 1000)
        print(
            f"  wakes {len(result.wakes_ms)} (missed {result.missed}), "
            f"p50 {pct(result.wakes_ms, 0.5):.1f} ms p99 {pct(result.wakes_ms, 0.99):.1f} ms; "
            f"approval POST p50 {pct(result.approvals_ms, 0.5):.1f} ms "
            f"p99 {pct(result.approvals_ms, 0.99):.1f} ms",
            flush=True,
        )
    finally:
        generator.stop()
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # nearest rank: p99 of 200 is the second-worst sample
    return ordered[int(rank) - 1]


@contextmanager
def code_before(revision: str, tmp: Path) -> Iterator[Path]:
    target = tmp / "before"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    yield target / "src"


@contextmanager
def serving(
    workdir: Path, code_path: Path | None, agents: dict[str, list[str]], settings: dict[str, Any]
) -> Iterator[LiveServer]:
    saved = os.environ.get("PYTHONPATH")
    if code_path is not None:
        os.environ["PYTHONPATH"] = str(code_path)
    try:
        server = start_server(workdir, agents=agents, users=DEFAULT_USERS, settings=settings, timeout=120)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield server
    finally:
        server.stop()


def machine() -> str:
    model = "unknown"
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
        if line.startswith("Model name"):
            model = line.split(":", 1)[1].strip()
    return f"`nproc` {os.cpu_count()}, {model}, Python {platform.python_version()}"


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def report(results: list[Result], args: argparse.Namespace, started: datetime, loads: list[str]) -> str:
    rows = []
    for r in results:
        per_waiter = (r.rss_mib - r.rss_before_mib) * 1024 / r.waiters
        rows.append(
            f"| {r.mode} | {r.code} | {r.waiters:,} | {r.rss_mib:.0f} | {r.rss_before_mib:.0f} "
            f"| {per_waiter:.1f} "
            f"| {r.idle_cpu_percent:.1f} | {len(r.wakes_ms)} / {r.missed} | {pct(r.wakes_ms, 0.5):.1f} "
            f"| {pct(r.wakes_ms, 0.99):.1f} | {pct(r.approvals_ms, 0.5):.1f} "
            f"| {pct(r.approvals_ms, 0.99):.1f} "
            f"| {json.dumps(r.settled)} {r.note} |"
        )
    table = "\n".join(rows)
    return f"""# 10,000 waiters on one server

Produced by `benchmarks/waiters_bench.py --waiters {args.waiters} --wakes {args.wakes}
--idle {args.idle:.0f} --requests {args.requests} --agents {args.agents}` from {started:%Y-%m-%d %H:%M}
to {datetime.now(UTC):%H:%M} UTC; machine: {machine()}; load average (1, 5, 15 min) at each step:
{"; ".join(loads)}. "before" is `{args.before}` (the code before issue #12's waiter work), "after" this
tree; both run from the same virtualenv on SQLite, one after the other in the same run.

{HEADER.format(idle=args.idle)}
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{table}

Goals (issue #12): ≤ 150 MiB RSS, ≤ 5 % of a core idle, wake p99 ≤ 50 ms, an approval answering promptly while
all waiters are connected.

- *wake*: from sending the approving `POST /v1/actions/{{id}}/reviews` to the probe waiter's process
  receiving the decision (long-poll: the response's head; SSE: the new `state` event). It includes the
  approval's own durable commit; *approval POST* is that request's latency alone.
- *RSS before waiters*: the server after start-up and the submits, before any waiter connected.
- The load generator is a separate process of raw asyncio sockets; it is not counted in the server's CPU.
"""


def run(args: argparse.Namespace) -> str:
    raise_fd_limit()
    started = datetime.now(UTC)
    loads = [f"start {load_average()}"]
    agents = {f"agent:bench-{i}": ["bots"] for i in range(args.agents)}
    results = []
    codes = ["before", "after"] if args.only is None else [args.only]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with code_before(args.before, tmp) as before_src:
            for mode in args.modes.split(","):
                for code in codes:
                    print(f"{mode}, {code}: {args.waiters} waiters (load {load_average()})", flush=True)
                    # The code before had a 1,000-connection limit: lifted, or it cannot hold the waiters.
                    settings: dict[str, Any] = {"log_level": "error"}
                    if code == "before":
                        settings["server"] = {"limit_concurrency": None}
                    with serving(
                        tmp / f"{mode}-{code}", before_src if code == "before" else None, agents, settings
                    ) as server:
                        keys = [server.tokens[a] for a in agents]
                        results.append(measure(code, mode, server, args, keys))
                    loads.append(f"{mode}/{code} {load_average()}")
    return report(results, args, started, loads)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--load":
        load_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--wakes", type=int, default=200)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--requests", type=int, default=50, help="pending requests the idle waiters wait on")
    parser.add_argument("--agents", type=int, default=20, help="distinct API keys the waiters use")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--only", choices=("before", "after"), default=None)
    default_before = subprocess.run(
        ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True, text=True, check=False
    ).stdout.strip()
    parser.add_argument("--before", default=default_before or "main")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "waiters.md"))
    args = parser.parse_args()
    text = run(args)
    if args.output != "-":
        Path(args.output).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
