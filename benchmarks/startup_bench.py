"""Start-up benchmark: the per-call commands against a typer hello-world, `keyturn serve` against a bare
FastAPI app, and (with --before) the same commands of another checkout, all side by side in one run.

    .venv/bin/python benchmarks/startup_bench.py [--runs 7] [--before /path/to/old/worktree]
        [--postgres URL] [--output benchmarks/results/startup.md]

Commands (each run interleaves every case, so a loaded machine slows them alike):
- `hello --help`: a typer hello-world (one command) printing its help: the floor of a typer CLI;
- `keyturn --help`, `keyturn exec --help`;
- `keyturn hook claude-code` with a Claude Code PreToolUse input on stdin (a `Read`, which the test policy
  allows) against a running `keyturn serve`: the whole per-tool-call cost an agent pays;
- `keyturn exec --action test.allow -- true` against the same server.

Imports alone (no server started): what a bare FastAPI app imports, plus a database layer, against
`import keyturn.server.app`: the floor under a start.

Servers: spawn to the first 200 of `/healthz` (and, for keyturn, of `/readyz`), polled every 10 ms, on
SQLite and PostgreSQL; the bare app is FastAPI with one route under the same uvicorn.

`--before` names a checkout (e.g. `git worktree add --detach /tmp/before <commit>`) whose `src` runs on
this interpreter via PYTHONPATH (same dependencies). Child processes may write bytecode (a deployed
package has its `.pyc` files; without them every start compiles keyturn's sources again), and one untimed
run of each case comes first.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import fresh_postgres_schema  # noqa: E402
from support.live import LiveServer, free_port, start_server  # noqa: E402

KEYTURN = str(Path(sys.executable).parent / "keyturn")
HELLO = """\
import typer

app = typer.Typer()


@app.command()
def hello(name: str = "world") -> None:
    typer.echo(f"hello {name}")


app()
"""
BARE_APP = """\
import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
HOOK_INPUT = json.dumps(
    {
        "session_id": "bench",
        "transcript_path": "/tmp/bench.jsonl",
        "cwd": "/tmp",
        "hook_event_name": "PreToolUse",
        "tool_name": "Read",
        "tool_input": {"file_path": "/etc/hostname"},
    }
)


@dataclass(frozen=True)
class Variant:
    name: str  # "after" (this checkout) or "before"
    env: Mapping[str, str]


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    stdin: str = ""
    keyturn: bool = True  # run once per variant (the hello-world once per run)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra or {})
    return env


def time_command(case: Case, env: Mapping[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(case.argv, input=case.stdin, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{case.name} exited {done.returncode}: {done.stderr[-2000:]}")
    if case.stdin and '"allow"' not in done.stdout:
        raise RuntimeError(f"{case.name} did not allow: {done.stdout} {done.stderr[-2000:]}")
    return elapsed


def time_server(argv: list[str], port: int, env: Mapping[str, str], probes: list[str]) -> list[float]:
    """Seconds from spawn to the first 200 of each probe (in order), then SIGTERM."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            return [_first_200(process, f"http://127.0.0.1:{port}{probe}", started, log) for probe in probes]
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _first_200(process: subprocess.Popen[bytes], url: str, started: float, log: IO[bytes] | None) -> float:
    deadline = started + 180
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                output = b""
                if log is not None:
                    log.seek(0)
                    output = log.read()[-2000:]
                raise RuntimeError(f"{url}: server exited {process.returncode}: {output!r}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(url).status_code == 200:
                    return time.perf_counter() - started
            time.sleep(0.01)
    raise RuntimeError(f"{url}: no 200 within 180 s")


@contextlib.contextmanager
def prepared_server(workdir: Path, database_url: str | None) -> Iterator[LiveServer]:
    """The test harness's configuration (policy, users, agent keys), migrated by one real start."""
    server = start_server(workdir, database_url=database_url, timeout=180)
    server.stop()
    yield server


def serve_argv(server: LiveServer, port: int) -> list[str]:
    return [KEYTURN, "serve", "--config", str(server.config_path), "--port", str(port)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def cell(values: list[float], reference: float, spread: bool = True) -> str:
    """`median s (ratio x reference) [min-max]`."""
    value = median(values)
    text = f"{value:.2f} s ({value / reference:.1f}x)"
    return text + (f" [{min(values):.2f}-{max(values):.2f}]" if spread else "")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"`nproc` {os.cpu_count()}, {cpu}, Python {platform.python_version()}, {platform.system()}"


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--postgres", default=os.environ.get("KEYTURN_TEST_POSTGRES_URL"))
    parser.add_argument("--output", type=Path, help="write the markdown report here too")
    args = parser.parse_args()

    variants = [Variant("after", child_env())]
    if args.before is not None:
        variants.append(Variant("before", child_env({"PYTHONPATH": str(args.before.resolve() / "src")})))
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    begun = datetime.datetime.now(datetime.UTC)
    say(f"**Machine**: {machine()}. **Start**: {begun:%Y-%m-%d %H:%M} UTC, load average {load()}.")
    names = ", ".join(v.name for v in variants)
    say(f"Median of {args.runs} runs [min-max] after one untimed warm-up; variants: {names}.")
    say()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        hello = work / "hello.py"
        hello.write_text(HELLO, encoding="utf-8")
        bare = work / "bare_app.py"
        bare.write_text(BARE_APP, encoding="utf-8")

        with prepared_server(work / "cli", None) as target:
            port = free_port()
            server = subprocess.Popen(
                serve_argv(target, port),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=child_env(),
            )
            try:
                _first_200(server, f"http://127.0.0.1:{port}/readyz", time.perf_counter(), None)
                agent = {
                    "KEYTURN_URL": f"http://127.0.0.1:{port}",
                    "KEYTURN_API_KEY": target.tokens["agent:exec-bot"],
                }
                cases = [
                    Case("typer hello-world --help", [sys.executable, str(hello), "--help"], keyturn=False),
                    Case("keyturn --help", [KEYTURN, "--help"]),
                    Case("keyturn exec --help", [KEYTURN, "exec", "--help"]),
                    Case(
                        "keyturn hook claude-code (allowed Read)",
                        [KEYTURN, "hook", "claude-code"],
                        HOOK_INPUT,
                    ),
                    Case(
                        "keyturn exec -- true (allowed)",
                        [KEYTURN, "exec", "--action", "test.allow", "--", "true"],
                    ),
                ]
                times: dict[tuple[str, str], list[float]] = {}
                for run in range(args.runs + 1):
                    for case in cases:
                        for variant in variants if case.keyturn else variants[:1]:
                            elapsed = time_command(case, {**variant.env, **agent})
                            if run:  # the first is the warm-up (bytecode written, caches filled)
                                times.setdefault((case.name, variant.name), []).append(elapsed)
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=20)

        baseline = median(times[(cases[0].name, "after")])
        say("| command | " + " | ".join(f"{v.name} (x hello-world)" for v in variants) + " |")
        say("|---|" + "---|" * len(variants))
        for case in cases:
            cells = []
            for variant in variants:
                values = times.get((case.name, variant.name))
                if values is None:
                    cells.append("—")
                    continue
                cells.append(cell(values, baseline))
            say(f"| {case.name} | " + " | ".join(cells) + " |")
        say()
        say(f"Load average after the commands: {load()}.")
        say()

        backends: list[tuple[str, str | None]] = [("SQLite", None)]
        if args.postgres:
            backends.append(("PostgreSQL", args.postgres))
        say("| server | " + " | ".join(f"{v.name}: /healthz; /readyz (x bare)" for v in variants) + " |")
        say("|---|" + "---|" * len(variants))
        bare_times: list[float] = []
        rows: dict[tuple[str, str], list[list[float]]] = {}
        with contextlib.ExitStack() as stack:
            prepared = []
            for label, url in backends:
                database = stack.enter_context(fresh_postgres_schema()) if url else None
                prepared.append((label, stack.enter_context(prepared_server(work / label, database))))
            for run in range(args.runs + 1):
                port = free_port()
                bare_time = time_server(
                    [sys.executable, str(bare), str(port)], port, child_env(), ["/healthz"]
                )[0]
                if run:
                    bare_times.append(bare_time)
                for label, target in prepared:
                    for variant in variants:
                        port = free_port()
                        measured = time_server(
                            serve_argv(target, port), port, variant.env, ["/healthz", "/readyz"]
                        )
                        if run:
                            rows.setdefault((label, variant.name), []).append(measured)
        bare_median = median(bare_times)
        say(
            f"| bare FastAPI app under uvicorn (/healthz) | {cell(bare_times, bare_median)} |"
            + " |" * (len(variants) - 1)
        )
        for label, _ in prepared:
            cells = []
            for variant in variants:
                runs = rows[(label, variant.name)]
                health = cell([r[0] for r in runs], bare_median)
                ready = cell([r[1] for r in runs], bare_median, spread=False)
                cells.append(f"{health}; {ready}")
            say(f"| keyturn serve, {label} | " + " | ".join(cells) + " |")
        say()
        imports = [
            Case(
                "import fastapi, uvicorn (the bare app's)",
                [sys.executable, "-c", "import fastapi, uvicorn"],
                keyturn=False,
            ),
            Case(
                "... + sqlalchemy, psycopg (a database)",
                [sys.executable, "-c", "import fastapi, uvicorn, sqlalchemy.orm, psycopg"],
                keyturn=False,
            ),
            Case("import keyturn.server.app", [sys.executable, "-c", "import keyturn.server.app"]),
        ]
        import_times: dict[tuple[str, str], list[float]] = {}
        for run in range(args.runs + 1):
            for case in imports:
                for variant in variants if case.keyturn else variants[:1]:
                    elapsed = time_command(case, variant.env)
                    if run:
                        import_times.setdefault((case.name, variant.name), []).append(elapsed)
        floor = median(import_times[(imports[0].name, "after")])
        say(
            "| imports only (the floor of a start) | "
            + " | ".join(f"{v.name} (x bare app's)" for v in variants)
            + " |"
        )
        say("|---|" + "---|" * len(variants))
        for case in imports:
            cells = [
                cell(import_times[(case.name, v.name)], floor) if (case.name, v.name) in import_times else "—"
                for v in variants
            ]
            say(f"| {case.name} | " + " | ".join(cells) + " |")
        say()
        ended = datetime.datetime.now(datetime.UTC)
        say(f"**End**: {ended:%H:%M} UTC, load average {load()}.")
    if args.output:
        args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
