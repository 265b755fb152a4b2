"""`Gate`: the synchronous SDK. Submit, wait for the decision (pushed), consume the grant, run, report."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import httpx

from keyturn.sdk import _core
from keyturn.sdk._reports import FLUSH_SECONDS, ReportSender
from keyturn.sdk._wait import Watcher
from keyturn.sdk.errors import ApprovalTimeout, Denied, ServerError, Unreachable

log = logging.getLogger("keyturn.sdk")

F = TypeVar("F", bound=Callable[..., Any])
Retry = Literal["always", "connect"]
OnUpdate = Callable[[dict[str, Any]], Any]
Option = Any  # a value, or a callable of the call's params

MAX_ATTEMPTS = 6


class Gate:
    """The checkpoint in front of privileged code.

    ``url`` and ``api_key`` default to ``KEYTURN_URL`` / ``KEYTURN_API_KEY``. ``timeout`` bounds the wait
    for a decision (seconds); when it passes the request is cancelled and `ApprovalTimeout` raised, so a late
    approval can never start an action its caller has given up on. ``on_denied`` is the default of
    `guard`: ``"raise"`` raises `Denied`, ``"return"`` makes the guarded function return `Denied.for_model()`.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 3600.0,
        on_denied: str = "raise",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = _core.resolve_config(url, api_key, timeout, on_denied)
        self.url = self.config.url
        self.timeout = self.config.timeout
        self.on_denied = self.config.on_denied
        self._http = httpx.Client(
            base_url=self.url,
            headers=_core.headers(self.config.api_key),
            timeout=_core.HTTP_TIMEOUT,
            transport=transport,
        )
        self._reports = ReportSender(self._http)

    def __repr__(self) -> str:
        return f"Gate(url={self.url!r})"  # never the key

    # --- lifecycle -------------------------------------------------------------------------------------

    def flush(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait until the results reported in the background have landed (False: `timeout` passed first)."""
        return self._reports.flush(timeout)

    def close(self) -> None:
        """Flush the background reports (at most `FLUSH_SECONDS`), then close the connections."""
        self._reports.close()
        self._http.close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- HTTP ------------------------------------------------------------------------------------------

    def _send(
        self, method: str, path: str, *, retry: Retry = "always", deadline: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One call with retries. `retry="connect"` retries only failures where nothing reached the server."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
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
            time.sleep(pause)
            attempt += 1

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return _core.json_body(self._send(method, path, **kwargs))

    # --- low-level API ---------------------------------------------------------------------------------

    def submit(
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
        """Submit an action request; returns its view (with `grant` when it may run now).

        Retries after network errors reuse one idempotency key, so they never create a second request.
        """
        body = _core.submission_body(
            action,
            resource,
            params,
            justification,
            context,
            on_behalf_of,
            idempotency_key or _core.new_idempotency_key(),
        )
        return self._json("POST", "/v1/actions", json=body)

    def get(self, request_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/actions/{request_id}")

    def wait(
        self, request_id: str, timeout: float | None = None, *, on_update: OnUpdate | None = None
    ) -> dict[str, Any]:
        """Block until the request leaves `pending`; returns that view (runnable or refused).

        Pushed over Server-Sent Events (long-poll when the stream is unavailable), reconnecting with
        backoff. `on_update(view)` is called once per state change, the final one included. Raises
        `ApprovalTimeout` after `timeout` seconds (the request is left as it is), `Unreachable` if the
        server could not be reached by then.
        """
        return self._wait(request_id, _core.check_timeout(timeout or self.timeout), on_update, None)

    def _wait(
        self,
        request_id: str,
        timeout: float,
        on_update: OnUpdate | None,
        seen: tuple[Any, ...] | None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with Watcher(self._http, request_id, deadline) as watcher:
            for view in watcher.views():
                key = _core.view_key(view)
                if on_update is not None and key != seen:
                    on_update(_core.without_grant(view))
                seen = key
                if _core.decided(view):
                    return view
            if watcher.network_error is not None:
                raise Unreachable(
                    f"lost keyturn at {self.url} while waiting for {request_id}: {watcher.network_error!r}"
                ) from watcher.network_error
            raise ApprovalTimeout(
                f"no decision on {request_id} within {timeout:g}s", request_id, watcher.last
            )

    def consume(self, grant: str) -> dict[str, Any]:
        """Consume a grant, exactly once: returns the approved action (params possibly edited) and secrets.

        Raises `GrantRefused` when the server refuses it. Only failures where nothing reached the server
        are retried: a retried consume that had succeeded would be refused, and failing closed is the point.
        """
        response = self._send("POST", "/v1/grants/consume", retry="connect", json={"grant": grant})
        if not response.is_success:
            raise _core.consume_error(response)
        return _core.json_body(response)

    def report(
        self, request_id: str, succeeded: bool, *, output_digest: str | None = None, detail: str = ""
    ) -> dict[str, Any]:
        """Report the outcome of an executed request (`succeeded` / `failed`)."""
        body = _core.result_body(succeeded, output_digest, detail)
        response = self._send("POST", f"/v1/actions/{request_id}/result", json=body)
        if response.status_code == 409:
            # A retry whose first attempt had landed: the request is finished, which is what we wanted.
            current = self.get(request_id)
            if current.get("status") in ("succeeded", "failed"):
                return current
        return _core.json_body(response)

    def cancel(self, request_id: str, reason: str = "") -> dict[str, Any]:
        """Cancel a pending request of this caller."""
        return self._json("POST", f"/v1/actions/{request_id}/cancel", json={"reason": reason})

    def _cancel_quietly(self, request_id: str, reason: str) -> None:
        try:
            self._send("POST", f"/v1/actions/{request_id}/cancel", json={"reason": reason}, retry="connect")
        except Exception as exc:  # the request may have been decided meanwhile, or the server is gone
            log.warning("could not cancel keyturn request %s: %r", request_id, exc)

    def _report_quietly(
        self, request_id: str, succeeded: bool, *, output_digest: str | None = None, detail: str = ""
    ) -> None:
        # The action already ran (or failed): raising now would make the caller think it did not.
        try:
            self.report(request_id, succeeded, output_digest=output_digest, detail=detail)
        except Exception as exc:
            log.warning("could not report the outcome of keyturn request %s: %r", request_id, exc)

    def _report_later(
        self, request_id: str, succeeded: bool, *, output_digest: str | None = None, detail: str = ""
    ) -> None:
        # After the guarded code ran, off the caller's path: retried in the background until it lands.
        self._reports.send(request_id, _core.result_body(succeeded, output_digest, detail))

    # --- request: the context manager ------------------------------------------------------------------

    @contextmanager
    def request(
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
    ) -> Iterator[_core.Approval]:
        """Ask, wait, consume; the block runs only with a consumed grant.

        Yields an `Approval` (`params` as approved, possibly edited; brokered `secrets`). Leaving the block
        reports `succeeded`, or `failed` with the exception's type name, unless `approval.report()` was
        called. Raises `Denied` (denied, expired, cancelled), `ApprovalTimeout`, `GrantRefused`,
        `Unreachable` or `ServerError` before the block, which then never runs.
        """
        approval = self._acquire(
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
            approval.report(False, detail=_core.failure_detail(exc))
            raise
        approval.report(True)

    def _acquire(
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
    ) -> _core.Approval:
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
        view = self._submit_executing(body, deadline, own_key=idempotency_key is None)
        request_id = str(view["id"])
        executed = _core.execution(view)
        if executed is not None:  # allowed outright: consumed by the submit itself, in one round trip
            return _core.Approval(**_core.approval_fields(view, executed), _reporter=self._report_later)
        if not _core.decided(view):
            try:
                if on_update is not None:
                    on_update(_core.without_grant(view))
                view = self._wait(request_id, deadline - time.monotonic(), on_update, _core.view_key(view))
            except ApprovalTimeout as exc:
                self._cancel_quietly(request_id, f"the requester stopped waiting after {timeout:g}s")
                raise ApprovalTimeout(
                    f"no decision on {request_id} within {timeout:g}s; the request was cancelled",
                    request_id,
                    exc.view,
                ) from None
            except BaseException:
                # Interrupted (Ctrl-C, a lost server, a bug in on_update): never leave a request that could
                # still be approved and run by a grant nobody is waiting for.
                self._cancel_quietly(request_id, "the requester stopped waiting")
                raise
        grant = _core.check_runnable(view)
        try:
            consumed = self.consume(grant)
        except Unreachable:
            # The consume may or may not have landed; if it did, this caller is the executor and closes it.
            self._report_quietly(request_id, False, detail="consume answer lost; nothing ran")
            raise
        return _core.Approval(**_core.approval_fields(view, consumed), _reporter=self._report_later)

    def _submit_executing(self, body: dict[str, Any], deadline: float, *, own_key: bool) -> dict[str, Any]:
        """Submit asking to execute. A lost answer to a submit that consumed the grant cannot be asked for
        again (a replay hands out no second execution): that request is closed as failed, and the same
        submission made once more as a new request."""
        view = _core.json_body(self._send("POST", "/v1/actions", json=body, deadline=deadline))
        if _core.execution_lost(view, own_key):
            self._report_later(str(view["id"]), False, detail=_core.LOST_EXECUTION)
            rekeyed = _core.rekeyed(body)
            view = _core.json_body(self._send("POST", "/v1/actions", json=rekeyed, deadline=deadline))
        return view

    # --- guard: the decorator --------------------------------------------------------------------------

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
        """Put the gate in front of a function (sync or async).

        The call's arguments (bound by signature, defaults applied, `self`/`cls` left out, `*args` as a
        list, `**kwargs` flattened) are the params; `resource`, `justification`, `context` and
        `on_behalf_of` are values or callables of those params. The function runs with the approved
        params (a reviewer's edits applied by name) after the grant is consumed; its outcome is reported
        with the digest of its return value.
        """
        mode = _core.check_on_denied(on_denied) if on_denied is not None else self.on_denied
        wait_for = _core.check_timeout(timeout) if timeout is not None else None

        def decorate(func: F) -> F:
            if inspect.iscoroutinefunction(func):
                return self._guard_coroutine(
                    func, action, resource, justification, context, on_behalf_of, mode, wait_for
                )
            signature = inspect.signature(func)

            @functools.wraps(func)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                call = _core.bind_call_signature(signature, args, kwargs)
                try:
                    with self.request(
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
                        approval.report(True, output_digest=_core.digest(value))
                        return value
                except Denied as denied:
                    if mode == "return":
                        return denied.for_model()
                    raise

            return guarded  # type: ignore[return-value]

        return decorate

    def _guard_coroutine(
        self,
        func: F,
        action: str,
        resource: Option,
        justification: Option,
        context: Option,
        on_behalf_of: Option,
        mode: str,
        wait_for: float | None,
    ) -> F:
        # An async function is guarded by an AsyncGate made per call: an httpx.AsyncClient belongs to one
        # event loop, and the caller's loop is only known when the coroutine runs.
        from keyturn.sdk.aio import AsyncGate

        @functools.wraps(func)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            async with AsyncGate(
                self.url, self.config.api_key, timeout=wait_for or self.timeout, on_denied=mode
            ) as gate:
                # the outcome goes through this Gate's sender, so closing the per-call gate waits for nothing
                gate._send_report = self._reports.send
                inner = gate.guard(
                    action,
                    resource=resource,
                    justification=justification,
                    context=context,
                    on_behalf_of=on_behalf_of,
                )(func)
                return await inner(*args, **kwargs)

        return guarded  # type: ignore[return-value]
