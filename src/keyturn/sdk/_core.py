"""What the sync `Gate` and the async `AsyncGate` share, free of I/O: configuration, binding a call's
arguments to params and back, reading a decided request, digests, retry timing."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import rfc8785

from keyturn.humanize import span
from keyturn.sdk.errors import (
    ConfigurationError,
    Denied,
    GrantRefused,
    NotRunnable,
    ParamsMismatch,
    ServerError,
    UnserializableArguments,
)

OnDenied = Literal["raise", "return"]
Reporter = Callable[..., Any]

PENDING = "pending"
RUNNABLE = frozenset({"allowed", "approved"})
REFUSED = frozenset({"denied", "expired", "cancelled"})
# Answers worth retrying: the request may not have reached the service, or the service is briefly unable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})

DEFAULT_URL = "http://127.0.0.1:8300"
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# The server pings SSE streams every 15 s; a read silent for longer than this means a dead connection.
STREAM_READ_TIMEOUT = 45.0
LONG_POLL_SECONDS = 30.0


# --- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    url: str
    api_key: str
    timeout: float
    on_denied: OnDenied


def resolve_config(url: str | None, api_key: str | None, timeout: float, on_denied: str) -> Config:
    resolved_url = (url or os.environ.get("KEYTURN_URL") or DEFAULT_URL).rstrip("/")
    if not resolved_url.startswith(("http://", "https://")):
        raise ConfigurationError(f"url must start with http:// or https://, got {resolved_url!r}")
    key = api_key or os.environ.get("KEYTURN_API_KEY") or ""
    if not key:
        raise ConfigurationError("no API key: pass api_key=… or set KEYTURN_API_KEY")
    return Config(resolved_url, key, check_timeout(timeout), check_on_denied(on_denied))


def check_timeout(timeout: float) -> float:
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def check_on_denied(value: str) -> OnDenied:
    if value == "raise":
        return "raise"
    if value == "return":
        return "return"
    raise ConfigurationError(f"on_denied must be 'raise' or 'return', got {value!r}")


def headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": "keyturn-python-sdk"}


def new_idempotency_key() -> str:
    return f"sdk-{uuid.uuid4().hex}"


def backoff(attempt: int, *, base: float = 0.1, cap: float = 5.0) -> float:
    """Exponential backoff with jitter, so many agents reconnecting after an outage do not stampede."""
    return float(min(cap, base * 2.0**attempt)) * random.uniform(0.5, 1.0)


# --- HTTP answers --------------------------------------------------------------------------------------


def server_error(response: httpx.Response, cls: type[ServerError] = ServerError) -> ServerError:
    try:
        error = response.json()["error"]
        return cls(response.status_code, str(error["code"]), str(error["message"]), error.get("detail"))
    except (ValueError, KeyError, TypeError):
        return cls(response.status_code, "http_error", response.text[:500] or response.reason_phrase)


def json_body(response: httpx.Response, cls: type[ServerError] = ServerError) -> dict[str, Any]:
    if not response.is_success:
        raise server_error(response, cls)
    try:
        body = response.json()
    except ValueError as exc:
        raise ServerError(response.status_code, "bad_response", "the server's answer is not JSON") from exc
    if not isinstance(body, dict):
        raise ServerError(response.status_code, "bad_response", "the server's answer is not a JSON object")
    return body


def consume_error(response: httpx.Response) -> GrantRefused:
    error = server_error(response, GrantRefused)
    assert isinstance(error, GrantRefused)
    return error


# --- params: arguments → JSON and back ----------------------------------------------------------------


def canonical(value: Any) -> bytes:
    return bytes(rfc8785.dumps(value))


def normalise(value: Any, what: str) -> Any:
    """The value as the server will see it (JSON round trip), or `UnserializableArguments` naming it."""
    try:
        return json.loads(canonical(value))
    except (ValueError, TypeError, RecursionError) as exc:
        raise UnserializableArguments(
            f"argument {what!r} cannot be sent as JSON params ({exc}); pass JSON-compatible values "
            "(str, int, float, bool, None, lists, dicts with str keys) or compute them inside the function",
            what,
        ) from None


def digest(value: Any) -> str | None:
    """`sha256:<hex>` of the canonical JSON of a return value, or None when it is not JSON."""
    try:
        return "sha256:" + hashlib.sha256(canonical(value)).hexdigest()
    except (ValueError, TypeError, RecursionError):
        return None


@dataclass
class BoundCall:
    """A call's arguments, bound to the function's signature, and the params they make."""

    signature: inspect.Signature
    bound: inspect.BoundArguments
    params: dict[str, Any]  # JSON-normalised, what is submitted
    skipped: frozenset[str]  # `self` / `cls`: never params, passed through untouched

    def apply(self, approved: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments that carry exactly the approved params.

        Arguments a reviewer did not change keep their original Python objects (a tuple stays a tuple);
        changed ones take the approved JSON value. The result is checked against `approved`, so the
        function never runs with anything but what was approved.
        """
        if dict(approved) == self.params:
            return self.bound.args, self.bound.kwargs
        arguments = dict(self.bound.arguments)
        extra = {k: v for k, v in approved.items() if k not in self.signature.parameters}
        for name, parameter in self.signature.parameters.items():
            if name in self.skipped:
                continue
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                original = dict(arguments.get(name, {}))
                arguments[name] = {
                    k: original[k] if k in original and v == self.params.get(k) else v
                    for k, v in extra.items()
                }
                extra = {}
            elif name in approved:
                if approved[name] != self.params.get(name):
                    value = approved[name]
                    if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                        if not isinstance(value, list):
                            raise ParamsMismatch(f"approved param {name!r} must be a list (it is *{name})")
                        value = tuple(value)
                    arguments[name] = value
            elif name in arguments and parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                raise ParamsMismatch(f"the approved params lack {name!r}; refusing to guess its value")
        if extra:
            raise ParamsMismatch(
                f"the approved params name {sorted(extra)}, which the function does not accept; "
                "refusing to run"
            )
        rebound = inspect.BoundArguments(self.signature, arguments)
        args, kwargs = rebound.args, rebound.kwargs
        check = bind_call_signature(self.signature, args, kwargs)
        if check.params != dict(approved):
            raise ParamsMismatch("the approved params cannot be applied to the function's arguments exactly")
        return args, kwargs


def bind_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> BoundCall:
    return bind_call_signature(inspect.signature(func), args, kwargs)


def bind_call_signature(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> BoundCall:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    params: dict[str, Any] = {}
    skipped: set[str] = set()
    for index, (name, value) in enumerate(bound.arguments.items()):
        kind = signature.parameters[name].kind
        if index == 0 and name in ("self", "cls") and kind is not inspect.Parameter.KEYWORD_ONLY:
            skipped.add(name)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            params[name] = normalise(list(value), name)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            for key, item in value.items():
                params[key] = normalise(item, key)
        else:
            params[name] = normalise(value, name)
    return BoundCall(signature, bound, params, frozenset(skipped))


def evaluate(option: Any, params: dict[str, Any], default: Any) -> Any:
    """A guard option is a value or a callable of the params (`resource=lambda table, **_: …`)."""
    if option is None:
        return default
    if callable(option):
        return option(**params)
    return option


# --- decided requests ----------------------------------------------------------------------------------


def denial(view: dict[str, Any]) -> Denied:
    """The `Denied` for a denied, expired or cancelled request, with a sentence a model can act on."""
    request_id = str(view.get("id", ""))
    status = str(view.get("status", ""))
    verdict = view.get("verdict") or {}
    if status == "denied":
        deny = next((r for r in reversed(view.get("reviews") or []) if r.get("decision") == "deny"), None)
        if deny is not None:
            reviewer, comment = str(deny.get("reviewer", "")), str(deny.get("comment") or "")
            text = f"denied by {reviewer}" + (f": {comment}" if comment else "")
            return Denied(
                request_id,
                status,
                comment or "denied by a reviewer",
                reviewer=reviewer,
                comment=comment,
                view=view,
                text=text,
            )
        reason = str(verdict.get("reason") or "")
        rules = [str(r.get("rule")) for r in verdict.get("rules") or [] if r.get("rule")]
        reason = reason or (f"rule {', '.join(rules)}" if rules else "no rule allows it")
        return Denied(request_id, status, reason, view=view, text=f"denied by policy ({reason})")
    if status == "expired":
        window = span(view.get("created_at"), view.get("expires_at"))
        reason = f"nobody approved within {window}" if window else "nobody approved in time"
        needed = ", ".join(view.get("still_needed") or _expired_still_needed(view))
        text = f"expired: {reason}" + (f" (still needed: {needed})" if needed else "")
        return Denied(request_id, status, reason, view=view, text=text)
    if status == "cancelled":
        actor, reason = _cancellation(view)
        text = "cancelled" + (f" by {actor}" if actor else "") + (f": {reason}" if reason else "")
        return Denied(request_id, status, reason or "cancelled", reviewer=actor, view=view, text=text)
    raise ValueError(f"request {request_id} is {status}, which is not a refusal")


def _cancellation(view: dict[str, Any]) -> tuple[str | None, str]:
    for event in reversed(view.get("history") or []):
        if event.get("type") == "request.cancelled":
            payload = event.get("payload") or {}
            return event.get("actor"), str(payload.get("reason") or "")
    return None, ""


def _expired_still_needed(view: dict[str, Any]) -> list[str]:
    for event in reversed(view.get("history") or []):
        if event.get("type") == "request.expired":
            return [str(n) for n in (event.get("payload") or {}).get("still_needed") or []]
    return []


def decided(view: dict[str, Any]) -> bool:
    return view.get("status") != PENDING


def check_runnable(view: dict[str, Any]) -> str:
    """The grant of a runnable view; `Denied` for a refusal; `NotRunnable` for anything else."""
    status = str(view.get("status"))
    if status in REFUSED:
        raise denial(view)
    request_id = str(view.get("id"))
    if status not in RUNNABLE:
        raise NotRunnable(f"request {request_id} is {status}; it cannot run (again) here", request_id, status)
    grant = view.get("grant")
    if not isinstance(grant, str) or not grant:
        raise NotRunnable(
            f"request {request_id} is {status} but no grant was handed to this caller (only the requester "
            "receives it, once)",
            request_id,
            status,
        )
    return grant


def view_key(view: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies one state of a request, to call `on_update` once per change."""
    return view.get("status"), view.get("updated_at"), len(view.get("reviews") or [])


def without_grant(view: dict[str, Any]) -> dict[str, Any]:
    """The view for `on_update` callbacks: the grant is a bearer credential and stays inside the SDK
    (a gateway that forwards progress to its client must not hand the client a consumable grant)."""
    return {k: v for k, v in view.items() if k != "grant"}


def failure_detail(exc: BaseException) -> str:
    # The type name only: exception messages can carry data (even secrets) that must not reach the ledger.
    return f"raised {type(exc).__name__}"


# --- approvals -----------------------------------------------------------------------------------------


@dataclass
class _ApprovalBase:
    request_id: str
    action: str
    resource: str
    params: dict[str, Any]
    edited: bool
    view: dict[str, Any]
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # brokered; never printed
    reported: bool = field(default=False, init=False)

    @property
    def original_params(self) -> dict[str, Any]:
        params = self.view.get("params")
        return dict(params) if isinstance(params, dict) else {}


@dataclass
class Approval(_ApprovalBase):
    """A consumed grant: what may run now (`params`, possibly edited by a reviewer) and the brokered secrets.

    Leaving the `with` block reports the outcome unless `report()` was called.
    """

    _reporter: Reporter | None = field(default=None, repr=False, compare=False)

    def report(self, succeeded: bool = True, *, output_digest: str | None = None, detail: str = "") -> None:
        if self.reported:
            return
        self.reported = True
        if self._reporter is not None:
            self._reporter(self.request_id, succeeded, output_digest=output_digest, detail=detail)


@dataclass
class AsyncApproval(_ApprovalBase):
    """`Approval` for `AsyncGate`: `await approval.report(...)`."""

    _reporter: Reporter | None = field(default=None, repr=False, compare=False)

    async def report(
        self, succeeded: bool = True, *, output_digest: str | None = None, detail: str = ""
    ) -> None:
        if self.reported:
            return
        self.reported = True
        if self._reporter is not None:
            await self._reporter(self.request_id, succeeded, output_digest=output_digest, detail=detail)


def approval_fields(view: dict[str, Any], consumed: dict[str, Any]) -> dict[str, Any]:
    params = consumed.get("params")
    secrets = consumed.get("secrets")
    return {
        "request_id": str(consumed.get("request_id") or view.get("id")),
        "action": str(consumed.get("action") or view.get("action")),
        "resource": str(consumed.get("resource") or view.get("resource") or ""),
        "params": dict(params) if isinstance(params, dict) else {},
        "edited": bool(consumed.get("edited")),
        "view": without_grant(view),
        "secrets": {str(k): str(v) for k, v in secrets.items()} if isinstance(secrets, dict) else {},
    }


def result_body(succeeded: bool, output_digest: str | None, detail: str) -> dict[str, Any]:
    """The body of `POST /v1/actions/{id}/result`."""
    body: dict[str, Any] = {"status": "succeeded" if succeeded else "failed", "detail": detail[:10_000]}
    if output_digest:
        body["output_digest"] = output_digest
    return body


def execution(view: dict[str, Any]) -> dict[str, Any] | None:
    """What a submit with `execute: true` consumed for this caller (`consume`'s answer), if it did."""
    executed = view.get("execution")
    return executed if isinstance(executed, dict) else None


LOST_EXECUTION = "the answer to the submit that consumed the grant was lost; nothing ran"


def execution_lost(view: dict[str, Any], own_key: bool) -> bool:
    """A submit answered `executing` without the execution: a retry of a submit that had consumed the grant
    and whose answer was lost (a replay never hands out a second execution). With a key this client made
    up, nobody else holds that execution: nothing ran under it."""
    return own_key and view.get("status") == "executing" and execution(view) is None


def rekeyed(body: dict[str, Any]) -> dict[str, Any]:
    """The same submission under a new idempotency key: a new request, evaluated by policy afresh."""
    return {**body, "idempotency_key": new_idempotency_key()}


def submission_body(
    action: str,
    resource: str,
    params: dict[str, Any] | None,
    justification: str,
    context: dict[str, Any] | None,
    on_behalf_of: str | None,
    idempotency_key: str,
    *,
    execute: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": action,
        "resource": resource,
        "params": normalise(params or {}, "params"),
        "justification": justification,
        "context": normalise(context or {}, "context"),
        "idempotency_key": idempotency_key,
    }
    if on_behalf_of:
        body["on_behalf_of"] = on_behalf_of
    if execute:
        body["execute"] = True
    return body
