"""Where the dispatcher's time goes (issue #10): claim, finish (worker threads) and the channel's post
(awaited, up to `max_in_flight` at once), timed around the real methods while one in-process dispatcher
delivers N outbox rows from SQLite to benchmarks/counting_receiver.py.

    .venv/bin/python benchmarks/channels_profile.py [ROWS]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import channels_bench as cb  # noqa: E402

from keyturn.channels.dispatcher import Dispatcher  # noqa: E402
from keyturn.channels.registry import build_channels  # noqa: E402
from keyturn.config import load_settings  # noqa: E402
from keyturn.redact import UNKEYED  # noqa: E402
from keyturn.store import Store  # noqa: E402
from keyturn.store.outbox import Outbox  # noqa: E402
from support.live import start_server  # noqa: E402

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 500
spent: dict[str, float] = defaultdict(float)
calls: dict[str, int] = defaultdict(int)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[name] += time.perf_counter() - t
            calls[name] += 1

    return wrapper


def atimed(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return await fn(*a, **k)
        finally:
            spent[name] += time.perf_counter() - t
            calls[name] += 1

    return wrapper


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        receiver = cb.CountingReceiver.start()
        try:
            server = start_server(
                work,
                policy=cb.policy(),
                settings=cb.webhook_settings(work / "cfg", {"siem": receiver, "oncall": receiver}),
                timeout=120,
            )
            server.stop()
            cb.fill(server, ROWS)
            settings = load_settings(server.config_path)
            store = Store.open(settings.database)
            Outbox.claim = timed("claim (thread)", Outbox.claim)  # type: ignore[method-assign]
            Outbox.finish = timed("finish (thread)", Outbox.finish)
            Outbox.next_due = timed("next_due (thread)", Outbox.next_due)
            Outbox.due_stats = timed("due_stats (thread)", Outbox.due_stats)
            channels = build_channels(settings, store)
            hook = channels["webhook"]
            hook.post = atimed("webhook post (await, concurrent)", hook.post)
            d = Dispatcher(store, channels, settings.channels.delivery, settings.base_url, UNKEYED)
            await store.feed.start()
            started = time.perf_counter()
            task = asyncio.create_task(d.run())
            while receiver.stats()["count"] < ROWS:
                await asyncio.sleep(0.1)
            wall = time.perf_counter() - started
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.feed.stop()
            stats = receiver.stats()
            rate = ROWS / (stats["last"] - stats["first"])
            print(f"{ROWS} rows, wall {wall:.2f} s, {rate:.0f}/s first→last")
            for name in spent:
                each = spent[name] / calls[name] * 1000
                print(f"  {name}: {calls[name]} calls, {spent[name]:.2f} s total, {each:.1f} ms each")
        finally:
            receiver.stop()


asyncio.run(main())
print(datetime.now(UTC).isoformat())
