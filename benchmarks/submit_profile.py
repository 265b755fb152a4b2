"""Where an allowed submit's CPU goes: the real `keyturn serve` under yappi (CPU clock, every thread).

    .venv/bin/python benchmarks/submit_profile.py [--seconds 10] [--connections 4] [--backend sqlite]

Starts `keyturn serve` (the configuration of tests/support/live.py) inside a yappi profile with the CPU
clock on all threads, drives allowed submits at it with submit_bench's load generator (a separate
process), stops it with SIGTERM, and splits the server's CPU time per submit into layers: the inclusive
CPU time of the function that is each layer's entry point. What benchmarks/README.md's "Profile of an
allowed submit" records. Needs yappi (`pip install yappi`: a profiling tool, not a keyturn dependency).
Under the profiler everything is slower; the shares are what to read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from submit_bench import AGENT, drive, load

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import fresh_postgres_schema
from support.live import LiveServer, start_server

# (layer, module suffix, function name): the layer's inclusive CPU time is that function's (all callers).
LAYERS: tuple[tuple[str, str, str], ...] = (
    ("whole submit handler (thread pool)", "keyturn/server/api/actions.py", "submit"),
    ("authentication (API key check)", "keyturn/identity/authenticator.py", "authenticate"),
    ("service.submit", "keyturn/service.py", "submit"),
    ("  policy evaluation", "keyturn/service.py", "evaluate"),
    ("  workflow.submit (events, incl. their redaction)", "keyturn/workflow.py", "submit"),
    ("  store.insert_request (SQL + commit)", "keyturn/store/store.py", "insert_request"),
    ("    SQLAlchemy Connection.execute", "sqlalchemy/engine/base.py", "execute"),
    ("    commit", "sqlalchemy/engine/base.py", "commit"),
    ("    ledger append (leaf hashes)", "keyturn/store/store.py", "_append_events"),
    ("    RequestRecord.model_dump_json", "keyturn/store/store.py", "_request_columns"),
    ("response view + grant token (render)", "keyturn/server/api/actions.py", "render"),
    ("  request_view (incl. its redaction)", "keyturn/views.py", "request_view"),
    ("  grant token (Ed25519 signing)", "keyturn/service.py", "grant_token"),
    ("redaction, all of it (Redactor.document)", "keyturn/redact.py", "document"),
    ("key ring redactor look-ups (stat + listdir)", "keyturn/signing_keys.py", "redactor"),
    ("canonical JSON, all of it", "keyturn/model.py", "canonical_json"),
    ("Keyturn.redactor (per call)", "keyturn/service.py", "redactor"),
    ("outbox dispatcher: claim", "keyturn/store/outbox.py", "claim"),
    ("outbox dispatcher: next_due", "keyturn/store/outbox.py", "next_due"),
)

LAUNCHER = """
import atexit, json, signal, sys, yappi
STATS = sys.argv[1]
yappi.set_clock_type("cpu")
yappi.start(builtins=False, profile_threads=True)
def dump():
    yappi.stop()
    out = {}
    for f in yappi.get_func_stats():
        key = f.module + "|" + f.name.split(".")[-1]
        total, calls, own = out.get(key, (0.0, 0, 0.0))
        out[key] = (total + f.ttot, calls + f.ncall, own + f.tsub)
    for t in yappi.get_thread_stats():
        out["thread|" + t.name + "|" + str(t.id)] = (t.ttot, t.sched_count, t.ttot)
    with open(STATS, "w") as fh:
        json.dump(out, fh)
atexit.register(dump)
# uvicorn raises the signal again once it has shut down: exit normally then, so atexit runs
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
# SIGUSR1 after the warm-up: start and imports out of the figures
signal.signal(signal.SIGUSR1, lambda *_: yappi.clear_stats())
sys.argv = ["keyturn", *sys.argv[2:]]
from keyturn.entry import main
main()
"""


def profiled_server(server: LiveServer, stats: Path) -> subprocess.Popen[bytes]:
    """The same configuration and port as `server` (stopped), started again under yappi."""
    assert server.log_path is not None
    log = server.log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(stats), "serve", "--config", str(server.config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=server.workdir,
    )
    server.process = process
    server._wait_ready(120)
    return process


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--top", type=int, default=0, help="also list the N functions of most own CPU")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        database_url = stack.enter_context(fresh_postgres_schema()) if args.backend == "postgresql" else None
        server = start_server(Path(tmp) / "kt", database_url=database_url)
        server.stop()
        stats = Path(tmp) / "stats.json"
        process = profiled_server(server, stats)
        stack.callback(server.stop)
        drive(server.url, server.tokens[AGENT], 4, 2.0, 200)  # warm up
        process.send_signal(signal.SIGUSR1)
        done = drive(server.url, server.tokens[AGENT], args.connections, args.seconds, 1 << 30)
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        if not stats.exists():
            raise SystemExit(f"the profiled server wrote no statistics:\n{server.log()[-3000:]}")
        functions = json.loads(stats.read_text())
    submits = len(done["latencies"])
    print(
        f"{args.backend}, {args.connections} connections, {submits} submits under the profiler; "
        f"load average {load()}"
    )

    def inclusive(module: str, function: str) -> tuple[float, int]:
        matches = [v for k, v in functions.items() if k.endswith(f"{module}|{function}")]
        return sum(m[0] for m in matches), sum(m[1] for m in matches)

    threads = {k: v for k, v in functions.items() if k.startswith("thread|")}
    process = sum(v[0] for v in threads.values())
    print(f"| the whole process (all threads) | {1000 * process / submits:.2f} ms | |")
    by_name: dict[str, float] = {}
    for key, (seconds, _, _) in threads.items():
        by_name[key.split("|")[1]] = by_name.get(key.split("|")[1], 0.0) + seconds
    for name, seconds in sorted(by_name.items(), key=lambda item: -item[1])[:6]:
        print(f"|   threads {name} | {1000 * seconds / submits:.2f} ms | |")
    ranked = sorted(functions.items(), key=lambda item: -item[1][2])
    for key, (_, calls, own) in [r for r in ranked if not r[0].startswith("thread|")][: args.top]:
        print(
            f"|   own CPU {key.rsplit('/', 1)[-1]} | {1000 * own / submits:.2f} ms "
            f"| {calls / submits:.1f} calls |"
        )
    # the handler and its authentication dependency run as two calls in the thread pool
    whole = LAYERS[0][1:], LAYERS[1][1:]
    whole_seconds = sum(inclusive(*layer)[0] for layer in whole)
    print(f"| handler + authentication | {1000 * whole_seconds / submits:.2f} ms | 100 % | |")
    for name, module, function in LAYERS:
        seconds, calls = inclusive(module, function)
        print(
            f"| {name} | {1000 * seconds / submits:.2f} ms | {100 * seconds / whole_seconds:.0f} % "
            f"| {calls / submits:.1f} calls |"
        )


if __name__ == "__main__":
    main()
