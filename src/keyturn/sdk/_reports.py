"""Result reports sent after the guarded call has returned, so reporting adds nothing to the call itself.

Each client has one sender, started with its first report: a daemon thread for `Gate`, a task on the
running loop for `AsyncGate`. A report is retried with backoff for as long as the client lives (until it
lands, the request stays visible as `executing`); `close()` flushes what is queued, and a `Gate` that is
never closed is flushed at interpreter exit. A report the server refuses for good (a 4xx: the request is
not executing any more, e.g. a retry whose first attempt landed) is not retried.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import threading
import time
from typing import Any

import httpx

from keyturn.sdk import _core

log = logging.getLogger("keyturn.sdk")

FLUSH_SECONDS = 10.0  # the longest close() waits for queued reports to land
Report = tuple[str, dict[str, Any]]  # request id, body of POST /v1/actions/{id}/result


def result_path(request_id: str) -> str:
    return f"/v1/actions/{request_id}/result"


def landed(request_id: str, response: httpx.Response) -> bool:
    """Whether this answer ends the report's delivery; False: retry it."""
    if response.is_success:
        return True
    if response.status_code in _core.RETRY_STATUSES or response.status_code >= 500:
        return False
    # 409 after a retry whose first attempt had landed is expected; anything else is worth a warning.
    level = logging.DEBUG if response.status_code == 409 else logging.WARNING
    log.log(level, "keyturn refused the report of %s: %s", request_id, _core.server_error(response))
    return True


def _undelivered(count: int) -> None:
    log.warning(
        "%d keyturn result report(s) not delivered before close; their requests stay `executing`", count
    )


class ReportSender:
    """The background sender of one `Gate` (its `httpx.Client` is shared: it is thread-safe)."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http
        self._queue: queue.Queue[Report] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def send(self, request_id: str, body: dict[str, Any]) -> None:
        """Queue a report; returns at once."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="keyturn-reports", daemon=True)
                self._thread.start()
                atexit.register(self.flush)
        self._queue.put((request_id, body))

    def flush(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait until every queued report landed (True) or `timeout` passed (False)."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _undelivered(self._queue.unfinished_tasks)
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float = FLUSH_SECONDS) -> None:
        """Flush, then stop the thread (before its client closes)."""
        if self._thread is None:
            return
        self.flush(timeout)
        self._stopped.set()
        atexit.unregister(self.flush)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                request_id, body = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            try:
                self._deliver(request_id, body)
            finally:
                self._queue.task_done()

    def _deliver(self, request_id: str, body: dict[str, Any]) -> None:
        attempt = 0
        while not self._stopped.is_set():
            try:
                if landed(request_id, self._http.post(result_path(request_id), json=body)):
                    return
            except httpx.TransportError as exc:
                log.debug("keyturn report of %s failed (%r); retrying", request_id, exc)
            except RuntimeError:  # the client was closed under us: nothing can be sent any more
                return
            self._stopped.wait(_core.backoff(attempt))
            attempt += 1


class AsyncReportSender:
    """The background sender of one `AsyncGate`: a task on the loop of the first report."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._queue: asyncio.Queue[Report] | None = None
        self._task: asyncio.Task[None] | None = None

    def send(self, request_id: str, body: dict[str, Any]) -> None:
        """Queue a report; returns at once (call it from the client's loop)."""
        if self._queue is None or self._task is None or self._task.done():
            self._queue = self._queue or asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(self._queue))
        self._queue.put_nowait((request_id, body))

    async def flush(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait until every queued report landed (True) or `timeout` passed (False)."""
        if self._queue is None:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            _undelivered(self._queue.qsize() + 1)
            return False
        return True

    async def close(self, timeout: float = FLUSH_SECONDS) -> None:
        """Flush what is queued (at most `timeout`), then stop the task."""
        await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()

    async def _run(self, reports: asyncio.Queue[Report]) -> None:
        while True:
            request_id, body = await reports.get()
            try:
                await self._deliver(request_id, body)
            finally:
                reports.task_done()

    async def _deliver(self, request_id: str, body: dict[str, Any]) -> None:
        attempt = 0
        while True:
            try:
                if landed(request_id, await self._http.post(result_path(request_id), json=body)):
                    return
            except httpx.TransportError as exc:
                log.debug("keyturn report of %s failed (%r); retrying", request_id, exc)
            except RuntimeError:  # the client was closed under us
                return
            await asyncio.sleep(_core.backoff(attempt))
            attempt += 1
