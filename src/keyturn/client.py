"""A small synchronous client of the REST API, used by the CLI (the SDK builds on the same calls)."""

from __future__ import annotations

import os
from typing import Any

import httpx


class ApiError(Exception):
    """An error answer of the server: `{"error": {"code", "message", "detail"}}`."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail or {}


class ServerUnreachable(ApiError):
    """No HTTP answer at all: the server is down, the URL is wrong, or the connection broke."""

    def __init__(self, url: str, exc: httpx.TransportError) -> None:
        reason = str(exc) or exc.__class__.__name__
        super().__init__(0, "unreachable", f"cannot reach the keyturn server at {url}: {reason}")


def default_url() -> str:
    return os.environ.get("KEYTURN_URL", "http://127.0.0.1:8300")


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        raise ApiError(response.status_code, error["code"], error["message"], error.get("detail"))
    except (ValueError, KeyError, TypeError):
        raise ApiError(
            response.status_code, "http_error", response.text[:500] or response.reason_phrase
        ) from None


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or default_url()).rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=auth_headers(token), timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, exc) from exc
        raise_for_error(response)
        return response.json()

    def submit(
        self, action: str, resource: str = "", params: dict[str, Any] | None = None, **fields: Any
    ) -> Any:
        body = {"action": action, "resource": resource, "params": params or {}, **fields}
        return self._call("POST", "/v1/actions", json={k: v for k, v in body.items() if v is not None})

    def get(self, request_id: str) -> Any:
        return self._call("GET", f"/v1/actions/{request_id}")

    def list(self, *, status: str | None = None, reviewable: bool = False, limit: int = 50) -> Any:
        query: dict[str, Any] = {"limit": limit, "reviewable": str(reviewable).lower()}
        if status:
            query["status"] = status
        return self._call("GET", "/v1/actions", params=query)

    def review(
        self, request_id: str, decision: str, comment: str = "", params: dict[str, Any] | None = None
    ) -> Any:
        body: dict[str, Any] = {"decision": decision, "comment": comment}
        if params is not None:
            body["params"] = params
        return self._call("POST", f"/v1/actions/{request_id}/reviews", json=body)

    def cancel(self, request_id: str, reason: str = "") -> Any:
        return self._call("POST", f"/v1/actions/{request_id}/cancel", json={"reason": reason})

    def wait(self, request_id: str, timeout: float = 30.0) -> Any:
        return self._call(
            "GET", f"/v1/actions/{request_id}/wait", params={"timeout": timeout}, timeout=timeout + 10
        )

    def consume(self, grant: str) -> Any:
        return self._call("POST", "/v1/grants/consume", json={"grant": grant})

    def result(self, request_id: str, status: str, output_digest: str | None = None, detail: str = "") -> Any:
        body: dict[str, Any] = {"status": status, "detail": detail}
        if output_digest:
            body["output_digest"] = output_digest
        return self._call("POST", f"/v1/actions/{request_id}/result", json=body)

    def evaluate(self, body: dict[str, Any]) -> Any:
        return self._call("POST", "/v1/evaluate", json=body)

    def chat_link(self, code: str) -> Any:
        return self._call("POST", "/v1/chat/links", json={"code": code})

    def chat_links(self) -> Any:
        return self._call("GET", "/v1/chat/links")

    def chat_unlink(self, provider: str, team_id: str, user_id: str) -> Any:
        return self._call("DELETE", f"/v1/chat/links/{provider}/{team_id}/{user_id}")
