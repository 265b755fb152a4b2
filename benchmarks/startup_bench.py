"""Start-up benchmark: `keyturn serve` to the first 200 from /readyz, and where the time goes.

    .venv/bin/python benchmarks/startup_bench.py [--runs 5] [--postgres URL]

Each run starts a real `keyturn serve` (the test harness's configuration: policy, users file, data dir)
on SQLite and on PostgreSQL, polls /readyz every 10 ms, and stops it with SIGTERM. The import of the
server's modules is timed on its own (`python -c "import keyturn.server.app"`), as it is the largest
part of a start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from conftest import fresh_postgres_schema
from support.live import start_server


def time_import(module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - started


def time_start(workdir: Path, database_url: str | None) -> tuple[float, float]:
    """(seconds to the first ready answer, seconds for SIGTERM to stop it)."""
    server = start_server(workdir, database_url=database_url)  # writes the config, keys, users
    server.stop()
    assert server.log_path is not None
    started = time.perf_counter()
    server.start(timeout=120)
    ready = time.perf_counter() - started
    started = time.perf_counter()
    server.stop()
    return ready, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    imports = [time_import("keyturn.server.app") for _ in range(args.runs)]
    bare = [time_import("fastapi, sqlalchemy, pydantic, uvicorn") for _ in range(args.runs)]
    print(
        f"import keyturn.server.app: median {statistics.median(imports):.2f} s "
        f"(fastapi+sqlalchemy+pydantic+uvicorn alone: {statistics.median(bare):.2f} s)"
    )
    for backend in ("sqlite", "postgresql"):
        starts, stops = [], []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                if backend == "sqlite":
                    ready, stop = time_start(Path(folder) / f"s{i}", None)
                else:
                    with fresh_postgres_schema() as url:
                        ready, stop = time_start(Path(folder) / f"s{i}", url)
            starts.append(ready)
            stops.append(stop)
        print(
            f"{backend}: serve -> /readyz 200 median {statistics.median(starts):.2f} s "
            f"(min {min(starts):.2f}, max {max(starts):.2f}); "
            f"SIGTERM -> exit median {statistics.median(stops):.2f} s"
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    httpx.Client().close()


if __name__ == "__main__":
    main()
