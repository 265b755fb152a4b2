"""Server-Sent Events as a plain ASGI response: one coroutine per stream, nothing else.

sse-starlette's `EventSourceResponse` runs a task group of four tasks per stream (the body, a ping loop, a
disconnect listener, a shutdown listener), and Starlette's `StreamingResponse` two. With ten thousand open
streams that is tens of thousands of tasks and their frames (benchmarks/results/waiters.md). Here the
event source itself says when to ping: it yields `None` after an idle while, the response writes a comment
line, and the source checks for a gone client at that moment (uvicorn drops writes to a closed connection
silently, so a ping alone would not notice). A client that leaves is therefore noticed at the next event
or ping, within the ping interval, without a task waiting on every connection.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

PING = b": ping\n\n"


@dataclass(frozen=True, slots=True)
class ServerEvent:
    event: str
    data: str
    id: str | None = None

    def encode(self) -> bytes:
        lines = [f"event: {self.event}"]
        if self.id is not None:
            lines.append(f"id: {self.id}")
        lines.extend(f"data: {line}" for line in self.data.splitlines() or [""])
        return ("\n".join(lines) + "\n\n").encode()


def json_event(event: str, payload: object, id: str | None = None) -> ServerEvent:
    return ServerEvent(event, json.dumps(payload), id)


class EventStream(Response):
    """An ASGI response streaming `events`; a `None` from the source is written as a keep-alive ping.

    A `Response` so that FastAPI passes it through, but none of its body handling is used."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[ServerEvent | None]) -> None:
        self.events = events
        self.status_code = 200
        self.background: BackgroundTask | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),  # nginx: pass each event on as it comes
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            async for event in self.events:
                body = PING if event is None else event.encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()
