"""Action requests: submit, read, queue, review, cancel, wait, stream, report results."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Annotated, Any, Protocol

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder

from keyturn.identity import AuthenticationError
from keyturn.model import Principal, RequestRecord, ReviewDecision, Status
from keyturn.server.api.grants import consumed_view
from keyturn.server.api.schemas import CancelBody, ResultBody, ReviewBody, SubmitBody
from keyturn.server.deps import Caller, Human, Service, on_behalf_of, watch_credential
from keyturn.server.sse import EventStream, ServerEvent, json_event
from keyturn.service import Keyturn, ServiceError, Submission
from keyturn.views import request_view

router = APIRouter(prefix="/v1/actions", tags=["actions"])

MAX_WAIT_SECONDS = 300.0
SSE_PING_SECONDS = (12.0, 18.0)  # an idle stream writes a keep-alive comment once in this window
_jitter = random.Random()


class Changes(Protocol):
    """A feed subscription, as a waiter uses it."""

    def wake(self) -> None: ...

    async def wait(self, timeout: float) -> bool: ...


def render(svc: Keyturn, who: Principal, record: RequestRecord, *, history: bool = False) -> dict[str, Any]:
    view = request_view(record, base_url=svc.settings.base_url, redactor=svc.redactor)
    token = svc.grant_token(who, record)
    if token is not None:
        view["grant"] = token
    if history:
        view["history"] = svc.history(record)
    return view


@router.post("", status_code=201, summary="Submit an action request")
def submit(body: SubmitBody, request: Request, who: Caller, svc: Service) -> dict[str, Any]:
    """`X-Keyturn-On-Behalf-Of-Token` (an RFC 8693 token naming the caller as `act`) proves on_behalf_of.

    With `execute: true`, an action policy allows outright comes back already consumed by the caller
    (`status: executing`, `execution` as `POST /v1/grants/consume` answers): one round trip instead of two.
    """
    fields = body.model_dump(exclude={"execute"})
    fields["on_behalf_of"], fields["on_behalf_of_verified"] = on_behalf_of(request, who, body.on_behalf_of)
    if not body.execute:
        return render(svc, who, svc.submit(who, Submission(**fields)))
    submitted = svc.submit_and_execute(who, Submission(**fields))
    view = render(svc, who, submitted.record)
    if submitted.consumed is not None:
        view["execution"] = consumed_view(submitted.consumed)
    return view


@router.get("", summary="List requests; reviewable=true gives the caller's review queue")
def list_requests(
    who: Caller,
    svc: Service,
    status: Status | None = None,
    reviewable: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    records, next_cursor = svc.list(who, status=status, reviewable=reviewable, limit=limit, cursor=cursor)
    return {"items": [render(svc, who, r) for r in records], "next_cursor": next_cursor}


@router.get("/{request_id}", summary="A request with its reviews and history")
def get_request(request_id: str, who: Caller, svc: Service) -> dict[str, Any]:
    return render(svc, who, svc.get(who, request_id), history=True)


@router.post("/{request_id}/reviews", summary="Approve or deny (humans only)")
def review(request_id: str, body: ReviewBody, who: Human, svc: Service) -> dict[str, Any]:
    record = svc.review(who, request_id, ReviewDecision(body.decision), body.comment, body.params)
    return render(svc, who, record)


@router.post("/{request_id}/cancel", summary="Cancel a pending request (requester only)")
def cancel(request_id: str, who: Caller, svc: Service, body: CancelBody | None = None) -> dict[str, Any]:
    record = svc.cancel(who, request_id, body.reason if body else "")
    return render(svc, who, record)


@router.post("/{request_id}/result", summary="Report the outcome of an executed action")
def result(request_id: str, body: ResultBody, who: Caller, svc: Service) -> dict[str, Any]:
    record = svc.report_result(who, request_id, body.status == "succeeded", body.output_digest, body.detail)
    return render(svc, who, record)


@router.get("/{request_id}/wait", summary="Long-poll until the request is decided or `timeout` passes")
async def wait(
    request_id: str,
    request: Request,
    who: Caller,
    svc: Service,
    timeout: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 30.0,
) -> dict[str, Any]:
    """Returns as soon as the request leaves `pending` (approved, allowed, denied, expired, cancelled…);
    401 as soon as the caller's credential is revoked or expires while it waits.

    While it waits it holds no worker thread and reads nothing: it sleeps on its feed subscription, which
    a commit of this request, the shared credential sweep or the deadline wakes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with svc.changes(request_id) as changes:
        with watch_credential(request, who, changes.wake) as credential:
            while True:
                caller = credential.current()
                record = await to_thread.run_sync(svc.get, caller, request_id)
                remaining = deadline - loop.time()
                if record.status is not Status.PENDING or remaining <= 0:
                    view = await to_thread.run_sync(partial(render, svc, caller, record))
                    view["timed_out"] = record.status is Status.PENDING
                    return view
                del record  # ~10 KiB that ten thousand waiters would otherwise keep while they sleep
                await changes.wait(remaining)


@router.get("/{request_id}/events", summary="Server-Sent Events of the request's transitions")
async def events(request_id: str, request: Request, who: Caller, svc: Service) -> EventStream:
    """A `state` event now and at every transition until the request is decided; an `error` event, and the
    end, when the caller's credential is revoked or expires. Comment lines keep idle streams alive."""
    # Subscribed before the first read, so a transition between the read and the wait is not missed.
    changes = svc.changes(request_id)
    subscription = await changes.__aenter__()
    try:
        first = await to_thread.run_sync(svc.get, who, request_id)  # 404 before the stream starts
    except BaseException:
        await changes.__aexit__(None, None, None)
        raise
    return EventStream(_transitions(request, svc, who, first, changes, subscription))


async def _transitions(
    request: Request,
    svc: Keyturn,
    who: Principal,
    record: RequestRecord,
    changes: AbstractAsyncContextManager[Changes],
    subscription: Changes,
) -> AsyncIterator[ServerEvent | None]:
    try:
        with watch_credential(request, who, subscription.wake) as credential:
            last_version = -1
            while True:
                if record.version != last_version:
                    last_version = record.version
                    yield await to_thread.run_sync(_state_event, svc, who, record)
                    if record.status.terminal:
                        return
                request_id = record.id
                del record  # ~10 KiB that ten thousand streams would otherwise keep while they sleep
                # Idle streams ping at random moments in a window, so ten thousand never write in step.
                while not await subscription.wait(_jitter.uniform(*SSE_PING_SECONDS)):
                    if await request.is_disconnected():
                        return
                    yield None
                try:
                    who = credential.current()  # a revoked or expired credential ends the stream
                    record = await to_thread.run_sync(svc.get, who, request_id)
                except (AuthenticationError, ServiceError) as exc:
                    code = "unauthenticated" if isinstance(exc, AuthenticationError) else exc.code
                    yield json_event("error", {"error": {"code": code, "message": str(exc)}})
                    return
    finally:
        await changes.__aexit__(None, None, None)


def _state_event(svc: Keyturn, who: Principal, record: RequestRecord) -> ServerEvent:
    view = render(svc, who, record, history=True)
    return json_event("state", jsonable_encoder(view), id=str(record.version))  # history holds datetimes
