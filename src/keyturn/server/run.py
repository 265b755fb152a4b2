"""`keyturn serve`'s HTTP server: uvicorn with the bounds of `ServerSettings` (docs/operations.md).

- `header_timeout`: a connection that has not sent a complete request head within it is closed (uvicorn
  has a keep-alive timeout between requests, but nothing for a client that opens a connection, or starts
  a request, and then trickles its headers: the slowloris attack). `GuardedH11Protocol` adds it.
- `keep_alive_timeout`: idle connections between requests are closed after it.
- `limit_concurrency`: beyond this many connections plus requests in flight, uvicorn answers 503 at once
  instead of letting every call slow down. Idle waiters (long-polls, SSE streams) are connections, and
  cost a few KiB each, so the default (16,384) holds ten thousand of them; it is capped by the open-files
  limit, which start-up raises to its hard limit (keyturn.server.limits.connection_limit).
- `backlog` and `h11_max_incomplete_event_size`: a burst of thousands of waiters reconnecting at once
  (a replica restarted behind a load balancer) queues in the kernel instead of being refused; a request
  head may hold at most 16 KiB, so a slow client pins at most that much before `header_timeout`.
- `shutdown_timeout`: SIGTERM stops accepting, waits at most this long for requests in flight (a slow
  request, a long-poll, an SSE stream), then closes them, so a stop is always bounded.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from keyturn.config import Settings
from keyturn.server.limits import LISTEN_BACKLOG, MAX_HEAD_BYTES, connection_limit


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request head."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_cycle: Any = None
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._head_cycle:
            self._disarm_head_timer()  # a new request's head arrived complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_cycle = self.cycle
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is self._head_cycle and not self.transport.is_closing():
            self.logger.info(
                "closing a connection that sent no complete request head in %s s", self.header_timeout
            )
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    bounds = settings.server
    protocol = type("KeyturnH11Protocol", (GuardedH11Protocol,), {"header_timeout": bounds.header_timeout})
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "http": protocol,
        "timeout_keep_alive": bounds.keep_alive_timeout,
        "limit_concurrency": connection_limit(bounds.limit_concurrency),
        "backlog": LISTEN_BACKLOG,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_graceful_shutdown": bounds.shutdown_timeout,
    }
