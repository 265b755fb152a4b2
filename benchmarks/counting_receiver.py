"""A webhook receiver that only counts, in its own process (uvicorn): the sink of the throughput benchmark.

python benchmarks/counting_receiver.py PORT
GET /stats -> {"count": N, "first": t, "last": t, "ids": distinct webhook-ids}
"""

from __future__ import annotations

import sys
import time
from typing import Any

import uvicorn

state: dict[str, Any] = {"count": 0, "first": None, "last": None, "ids": set()}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while True:  # drain the body
        message = await receive()
        if not message.get("more_body"):
            break
    if scope["method"] == "GET":
        body = (
            f'{{"count": {state["count"]}, "first": {state["first"] or 0}, "last": {state["last"] or 0},'
            f' "ids": {len(state["ids"])}}}'
        ).encode()
    else:
        now = time.time()
        state["count"] += 1
        state["first"] = state["first"] or now
        state["last"] = now
        state["ids"].add(dict(scope["headers"]).get(b"webhook-id"))
        body = b""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
