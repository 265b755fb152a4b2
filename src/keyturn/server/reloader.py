"""Policy hot reload: the files are polled (a digest of their bytes every `policy_reload_interval` seconds)
and reloaded on SIGHUP; a policy that does not load is logged with its file and line, and the last good
policy keeps serving. The revision in use is on `/readyz` and in `keyturn_policy_revision_info`.

The users file needs nothing here: `UsersFile` re-reads it on the first request after it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from anyio import to_thread

from keyturn import metrics
from keyturn.policy import PolicyError, PolicyHolder

log = logging.getLogger("keyturn.policy")


def reload_now(holder: PolicyHolder, why: str) -> bool:
    """Reload once; True when a new policy is in use. Never raises for a bad policy."""
    before = holder.current.revision
    try:
        policy = holder.reload()
    except PolicyError as exc:
        metrics.POLICY_RELOADS.labels("failed").inc()
        problems = "; ".join(str(p) for p in exc.problems)
        log.error("policy not reloaded (%s), still serving revision %s: %s", why, before, problems)
        return False
    metrics.POLICY_RELOADS.labels("loaded").inc()
    metrics.set_policy_revision(policy.revision)
    if policy.revision != before:
        log.warning("policy reloaded (%s): revision %s -> %s", why, before, policy.revision)
    return True


@contextlib.asynccontextmanager
async def watching(holder: PolicyHolder, interval: float) -> AsyncIterator[None]:
    """For the server's lifespan: poll the files and listen for SIGHUP until the server stops."""
    metrics.set_policy_revision(holder.current.revision)
    hangup = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = False
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
        handled = True
    task = asyncio.create_task(_watch(holder, interval, hangup))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if handled:
            loop.remove_signal_handler(signal.SIGHUP)


async def _watch(holder: PolicyHolder, interval: float, hangup: asyncio.Event) -> None:
    while True:
        timeout = interval if interval > 0 else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hangup.wait(), timeout)
        try:
            if hangup.is_set():
                hangup.clear()
                await to_thread.run_sync(reload_now, holder, "SIGHUP")
            elif await to_thread.run_sync(holder.changed):
                await to_thread.run_sync(reload_now, holder, "the files changed")
        except Exception:  # a failing check must not stop the next one
            log.exception("policy reload check failed")
