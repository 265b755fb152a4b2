"""Waiting for a decision by push: Server-Sent Events, with long-poll as the fallback.

The sync `Watcher` reads the stream on a daemon thread and hands views over a queue, so the caller's
deadline is exact (a blocked socket read cannot be interrupted, and the server's 15 s pings would
otherwise stretch it) and the hand-over costs microseconds. The async `watch` is the same loop as a
generator the caller bounds with `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse, connect_sse

from keyturn.sdk import _core
from keyturn.sdk.errors import ServerError

_DONE = object()
STREAM_FAILURES_BEFORE_LONG_POLL = 3


def _stream_timeout(remaining: float) -> httpx.Timeout:
    return httpx.Timeout(_core.STREAM_READ_TIMEOUT, connect=min(10.0, max(remaining, 0.1)))


class _Transient(Exception):
    """A stream refused for a reason that passes (a replica going away behind a load balancer, a database
    outage): retried with backoff within the caller's timeout, never raised to the caller."""

    def __init__(self, error: ServerError) -> None:
        super().__init__(str(error))
        self.error = error


def _check_stream(response: httpx.Response) -> bool:
    """True when the events endpoint answered a stream; raises real errors; False means "use long-poll"."""
    if response.is_success:
        return True
    response.read()
    return _stream_refused(response)


def _stream_refused(response: httpx.Response) -> bool:
    error = _core.server_error(response)
    if response.status_code in _core.RETRY_STATUSES:
        raise _Transient(error)  # 502/503/504 from a proxy or a replica shutting down; 429
    if response.status_code in (404, 405) and error.code in ("http_error", "method_not_allowed"):
        return False  # a server (or proxy) without the events endpoint: not an error of the request
    raise error


def _parse(data: str) -> dict[str, Any]:
    view = json.loads(data)
    if not isinstance(view, dict):
        raise ServerError(200, "bad_response", "an SSE state event is not a JSON object")
    return view


class Watcher:
    """Pushes every state of one request into a queue until it is decided, the deadline passes or `stop()`."""

    def __init__(self, http: httpx.Client, request_id: str, deadline: float) -> None:
        self.http = http
        self.request_id = request_id
        self.deadline = deadline
        self.items: queue.Queue[object] = queue.Queue()
        self.stopped = threading.Event()
        self.network_error: BaseException | None = None  # the latest transient failure, for a clear timeout
        self.last: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, name=f"keyturn-wait-{request_id}", daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()  # the thread leaves at its next event or ping; it is a daemon and holds nothing

    def views(self) -> Iterator[dict[str, Any]]:
        """Views as they arrive; ends at the deadline. Errors of the server are raised here."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                item = self.items.get(timeout=remaining)
            except queue.Empty:
                return
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, dict)
            self.last = item
            yield item

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # handed to the caller, raised in its thread
            self.items.put(exc)
        finally:
            self.items.put(_DONE)

    def _loop(self) -> None:
        attempt = 0
        use_stream = True
        path = f"/v1/actions/{self.request_id}"
        while not self.stopped.is_set():
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                if use_stream:
                    with connect_sse(
                        self.http, "GET", f"{path}/events", timeout=_stream_timeout(remaining)
                    ) as source:
                        if not _check_stream(source.response):
                            use_stream = False
                            continue
                        for event in source.iter_sse():
                            attempt = 0
                            if event.event != "state":
                                continue
                            view = _parse(event.data)
                            self.items.put(view)
                            if _core.decided(view) or self.stopped.is_set():
                                return
                    # The stream ended while pending (server restart, proxy timeout): reconnect.
                else:
                    poll = min(_core.LONG_POLL_SECONDS, remaining)
                    response = self.http.get(f"{path}/wait", params={"timeout": poll}, timeout=poll + 15.0)
                    if response.status_code not in _core.RETRY_STATUSES:
                        view = _core.json_body(response)
                        attempt = 0
                        self.items.put(view)
                        if _core.decided(view):
                            return
                        continue
                    self.network_error = _core.server_error(response)
            except SSEError:
                use_stream = False  # answered, but not as a stream
                continue
            except _Transient as exc:
                self.network_error = exc.error
            except httpx.TransportError as exc:
                self.network_error = exc
                # A stream that keeps breaking (a proxy that cuts long responses): long-poll is push too.
                use_stream = use_stream and attempt + 1 < STREAM_FAILURES_BEFORE_LONG_POLL
            if self.stopped.wait(_core.backoff(attempt)):
                return
            attempt += 1


async def watch(
    http: httpx.AsyncClient, request_id: str, state: dict[str, Any]
) -> AsyncGenerator[dict[str, Any], None]:
    """Every state of one request until it is decided; the caller bounds it with a timeout.

    `state["network_error"]` keeps the latest transient failure so a timeout can say the server was lost.
    """
    attempt = 0
    use_stream = True
    path = f"/v1/actions/{request_id}"
    while True:
        try:
            if use_stream:
                async with aconnect_sse(
                    http, "GET", f"{path}/events", timeout=_stream_timeout(10.0)
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                        if not _stream_refused(source.response):
                            use_stream = False
                            continue
                    async for event in source.aiter_sse():
                        attempt = 0
                        if event.event != "state":
                            continue
                        view = _parse(event.data)
                        yield view
                        if _core.decided(view):
                            return
            else:
                poll = _core.LONG_POLL_SECONDS
                response = await http.get(f"{path}/wait", params={"timeout": poll}, timeout=poll + 15.0)
                if response.status_code not in _core.RETRY_STATUSES:
                    view = _core.json_body(response)
                    attempt = 0
                    yield view
                    if _core.decided(view):
                        return
                    continue
                state["network_error"] = _core.server_error(response)
        except SSEError:
            use_stream = False
            continue
        except _Transient as exc:
            state["network_error"] = exc.error
        except httpx.TransportError as exc:
            state["network_error"] = exc
            use_stream = use_stream and attempt + 1 < STREAM_FAILURES_BEFORE_LONG_POLL
        await asyncio.sleep(_core.backoff(attempt))
        attempt += 1
