"""`AsyncGate`: the SDK for asyncio code (agent frameworks, the MCP gateway). Same contract as `Gate`."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any, Literal, TypeVar

import anyio
import httpx

from keyturn.sdk import _core
from keyturn.sdk._reports import FLUSH_SECONDS, AsyncReportSender
from keyturn.sdk._wait import watch
from keyturn.sdk.errors import ApprovalTimeout, Denied, ServerError, Unreachable

log = logging.getLogger("keyturn.sdk")

F = TypeVar("F", bound=Callable[..., Any])
Retry = Literal["always", "connect"]
OnUpdate = Callable[[dict[str, Any]], "Awaitable[None] | None"]
Option = Any

MAX_ATTEMPTS = 6
CLEANUP_SECONDS = 10.0  # cancel/report on the way out must not hang a cancelled task for long


class AsyncGate:
    """The asyncio twin of `Gate`: `await gate.submit(...)`, `async with gate.request(...)`, `@gate.guard`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 3600.0,
        on_denied: str = "raise",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = _core.resolve_config(url, api_key, timeout, on_denied)
        self.url = self.config.url
        self.timeout = self.config.timeout
        self.on_denied = self.config.on_denied
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=_core.headers(self.config.api_key),
            timeout=_core.HTTP_TIMEOUT,
            transport=transport,
        )
        self._reports = AsyncReportSender(self._http)
        self._send_report: Callable[[str, dict[str, Any]], None] = self._reports.send

    def __repr__(self) -> str:
        return f"AsyncGate(url={self.url!r})"

    async def flush(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait until the results reported in the background have landed (False: `timeout` passed first)."""
        return await self._reports.flush(timeout)

    async def close(self) -> None:
        """Flush the background reports (at most `FLUSH_SECONDS`), then close the connections."""
        with anyio.CancelScope(shield=True):  # a cancelled owner must still not lose an outcome
            await self._reports.close()
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGate:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # --- HTTP ------------------------------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, *, retry: Retry = "always", deadline: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                retriable = retry == "always" or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                failure: BaseException = exc
            else:
                if response.status_code not in _core.RETRY_STATUSES or retry != "always":
                    return response
                retriable, failure = True, _core.server_error(response)
            pause = _core.backoff(attempt)
            out_of_time = deadline is not None and time.monotonic() + pause > deadline
            if not retriable or attempt + 1 >= MAX_ATTEMPTS or out_of_time:
                if isinstance(failure, ServerError):
                    raise failure
                raise Unreachable(f"cannot reach keyturn at {self.url}: {failure!r}") from failure
            log.debug("keyturn %s %s failed (%r); retrying in %.2fs", method, path, failure, pause)
            await asyncio.sleep(pause)
            attempt += 1

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return _core.json_body(await self._send(method, path, **kwargs))

    # --- low-level API ---------------------------------------------------------------------------------

    async def submit(
        self,
        action: str,
        *,
        resource: str = "",
        params: dict[str, Any] | None = None,
        justification: str = "",
        context: dict[str, Any] | None = None,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = _core.submission_body(
            action,
            resource,
            params,
            justification,
            context,
            on_behalf_of,
            idempotency_key or _core.new_idempotency_key(),
        )
        return await self._json("POST", "/v1/actions", json=body)

    async def get(self, request_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/actions/{request_id}")

    async def wait(
        self, request_id: str, timeout: float | None = None, *, on_update: OnUpdate | None = None
    ) -> dict[str, Any]:
        """Until the request leaves `pending`; see `Gate.wait`. `on_update` may be sync or async."""
        return await self._wait(request_id, _core.check_timeout(timeout or self.timeout), on_update, None)

    async def _wait(
        self,
        request_id: str,
        timeout: float,
        on_update: OnUpdate | None,
        seen: tuple[Any, ...] | None,
    ) -> dict[str, Any]:
        state: dict[str, Any] = {}
        last: dict[str, Any] | None = None
        try:
            # aclosing: leaving the loop at the decision must close the stream now, not at garbage collection.
            async with asyncio.timeout(timeout), aclosing(watch(self._http, request_id, state)) as views:
                async for view in views:
                    last = view
                    key = _core.view_key(view)
                    if on_update is not None and key != seen:
                        await _call(on_update, _core.without_grant(view))
                    seen = key
                    if _core.decided(view):
                        return view
        except TimeoutError:
            pass
        error = state.get("network_error")
        if error is not None:
            raise Unreachable(
                f"lost keyturn at {self.url} while waiting for {request_id}: {error!r}"
            ) from error
        raise ApprovalTimeout(f"no decision on {request_id} within {timeout:g}s", request_id, last)

    async def consume(self, grant: str) -> dict[str, Any]:
        response = await self._send("POST", "/v1/grants/consume", retry="connect", json={"grant": grant})
        if not response.is_success:
            raise _core.consume_error(response)
        return _core.json_body(response)

    async def report(
        self, request_id: str, succeeded: bool, *, output_digest: str | None = None, detail: str = ""
    ) -> dict[str, Any]:
        body = _core.result_body(succeeded, output_digest, detail)
        response = await self._send("POST", f"/v1/actions/{request_id}/result", json=body)
        if response.status_code == 409:
            current = await self.get(request_id)
            if current.get("status") in ("succeeded", "failed"):
                return current
        return _core.json_body(response)

    async def cancel(self, request_id: str, reason: str = "") -> dict[str, Any]:
        return await self._json("POST", f"/v1/actions/{request_id}/cancel", json={"reason": reason})

    async def _cancel_quietly(self, request_id: str, reason: str) -> None:
        # Shielded: this runs while the caller is being cancelled (an MCP client abandoning a call cancels
        # the handler's anyio scope, which would otherwise cancel this request too), and an abandoned request
        # left pending could still be approved and run later.
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(CLEANUP_SECONDS):
                    await self._send(
                        "POST", f"/v1/actions/{request_id}/cancel", json={"reason": reason}, retry="connect"
                    )
            except Exception as exc:
                log.warning("could not cancel keyturn request %s: %r", request_id, exc)

    async def _report_quietly(
        self, request_id: str, succeeded: bool, *, output_digest: str | None = None, detail: str = ""
    ) -> None:
        with anyio.CancelScope(shield=True):  # the outcome of something that ran must reach the ledger
            try:
                with anyio.fail_after(CLEANUP_SECONDS):
                    await self.report(request_id, succeeded, output_digest=output_digest, detail=detail)
            except Exception as exc:
                log.warning("could not report the outcome of keyturn request %s: %r", request_id, exc)

    async def _report_later(
        self, request_id: str, succeeded: bool, *, output_digest: str | None = None, detail: str = ""
    ) -> None:
        # After the guarded code ran, off the caller's path: retried in the background until it lands.
        self._send_report(request_id, _core.result_body(succeeded, output_digest, detail))

    # --- request: the context manager ------------------------------------------------------------------

    @asynccontextmanager
    async def request(
        self,
        action: str,
        *,
        resource: str = "",
        params: dict[str, Any] | None = None,
        justification: str = "",
        context: dict[str, Any] | None = None,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        on_update: OnUpdate | None = None,
    ) -> AsyncIterator[_core.AsyncApproval]:
        """See `Gate.request`. Cancelling the waiting task cancels the request too."""
        approval = await self._acquire(
            action,
            resource=resource,
            params=params,
            justification=justification,
            context=context,
            on_behalf_of=on_behalf_of,
            idempotency_key=idempotency_key,
            timeout=_core.check_timeout(timeout or self.timeout),
            on_update=on_update,
        )
        try:
            yield approval
        except BaseException as exc:
            await approval.report(False, detail=_core.failure_detail(exc))
            raise
        await approval.report(True)

    async def _acquire(
        self,
        action: str,
        *,
        resource: str,
        params: dict[str, Any] | None,
        justification: str,
        context: dict[str, Any] | None,
        on_behalf_of: str | None,
        idempotency_key: str | None,
        timeout: float,
        on_update: OnUpdate | None,
    ) -> _core.AsyncApproval:
        deadline = time.monotonic() + timeout
        body = _core.submission_body(
            action,
            resource,
            params,
            justification,
            context,
            on_behalf_of,
            idempotency_key or _core.new_idempotency_key(),
            execute=True,
        )
        view = await self._submit_executing(body, deadline, own_key=idempotency_key is None)
        request_id = str(view["id"])
        executed = _core.execution(view)
        if executed is not None:  # allowed outright: consumed by the submit itself, in one round trip
            return _core.AsyncApproval(**_core.approval_fields(view, executed), _reporter=self._report_later)
        if not _core.decided(view):
            try:
                if on_update is not None:
                    await _call(on_update, _core.without_grant(view))
                view = await self._wait(
                    request_id, deadline - time.monotonic(), on_update, _core.view_key(view)
                )
            except ApprovalTimeout as exc:
                await self._cancel_quietly(request_id, f"the requester stopped waiting after {timeout:g}s")
                raise ApprovalTimeout(
                    f"no decision on {request_id} within {timeout:g}s; the request was cancelled",
                    request_id,
                    exc.view,
                ) from None
            except BaseException:
                # Including asyncio.CancelledError: a tool call the agent abandoned must not run later.
                await self._cancel_quietly(request_id, "the requester stopped waiting")
                raise
        grant = _core.check_runnable(view)
        try:
            consumed = await self.consume(grant)
        except Unreachable:
            await self._report_quietly(request_id, False, detail="consume answer lost; nothing ran")
            raise
        return _core.AsyncApproval(**_core.approval_fields(view, consumed), _reporter=self._report_later)

    async def _submit_executing(
        self, body: dict[str, Any], deadline: float, *, own_key: bool
    ) -> dict[str, Any]:
        """Submit asking to execute. A lost answer to a submit that consumed the grant cannot be asked for
        again (a replay hands out no second execution): that request is closed as failed, and the same
        submission made once more as a new request."""
        view = _core.json_body(await self._send("POST", "/v1/actions", json=body, deadline=deadline))
        if _core.execution_lost(view, own_key):
            await self._report_later(str(view["id"]), False, detail=_core.LOST_EXECUTION)
            rekeyed = _core.rekeyed(body)
            view = _core.json_body(await self._send("POST", "/v1/actions", json=rekeyed, deadline=deadline))
        return view

    # --- guard -----------------------------------------------------------------------------------------

    def guard(
        self,
        action: str,
        *,
        resource: Option = None,
        justification: Option = None,
        context: Option = None,
        on_behalf_of: Option = None,
        on_denied: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """See `Gate.guard`. The guarded function is always a coroutine function; a sync body runs inline."""
        mode = _core.check_on_denied(on_denied) if on_denied is not None else self.on_denied
        wait_for = _core.check_timeout(timeout) if timeout is not None else None

        def decorate(func: F) -> F:
            signature = inspect.signature(func)
            is_coroutine = inspect.iscoroutinefunction(func)

            @functools.wraps(func)
            async def guarded(*args: Any, **kwargs: Any) -> Any:
                call = _core.bind_call_signature(signature, args, kwargs)
                try:
                    async with self.request(
                        action,
                        resource=str(_core.evaluate(resource, call.params, "")),
                        params=call.params,
                        justification=str(_core.evaluate(justification, call.params, "")),
                        context=_core.evaluate(context, call.params, None),
                        on_behalf_of=_core.evaluate(on_behalf_of, call.params, None),
                        timeout=wait_for,
                    ) as approval:
                        approved_args, approved_kwargs = call.apply(approval.params)
                        value = func(*approved_args, **approved_kwargs)
                        if is_coroutine:
                            value = await value
                        await approval.report(True, output_digest=_core.digest(value))
                        return value
                except Denied as denied:
                    if mode == "return":
                        return denied.for_model()
                    raise

            return guarded  # type: ignore[return-value]

        return decorate


async def _call(callback: OnUpdate, view: dict[str, Any]) -> None:
    outcome = callback(view)
    if inspect.isawaitable(outcome):
        await outcome
