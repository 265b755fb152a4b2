"""What the benchmarks that start real `keyturn serve` processes share: a PostgreSQL schema of their own,
nearest-rank quantiles, and the machine line every recorded figure carries.
"""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import make_url


@contextmanager
def postgres_schema(base: str) -> Iterator[str]:
    """A URL whose connections all use a new empty schema of `base`'s database, dropped afterwards."""
    schema = "bench_" + secrets.token_hex(4)
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def quantile(values: list[float], q: float) -> float:
    """Nearest rank: with 200 samples p99 is the second-worst, never an interpolation below a real sample."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]


def machine() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(
                ["lscpu"], capture_output=True, text=True, check=False
            ).stdout.splitlines()
            if line.startswith("Model name")
        )
    except StopIteration:
        model = platform.processor() or "unknown"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"`nproc` {os.cpu_count()}, {model}, Python {platform.python_version()}; "
        f"load average at the end of the run {load} (other work shares the machine)"
    )
