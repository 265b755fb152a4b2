"""The SDK's pure parts: arguments → params and back, the text of a refusal, digests, configuration."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from keyturn import ConfigurationError, Denied, Gate, KeyturnError, ParamsMismatch, UnserializableArguments
from keyturn.sdk import _core

# --- binding ---------------------------------------------------------------------------------------------


def export(table: str, rows: int = 100, *, tags: tuple[str, ...] = ()) -> None: ...


def test_params_are_the_bound_arguments_with_defaults() -> None:
    call = _core.bind_call(export, ("customers",), {})
    assert call.params == {"table": "customers", "rows": 100, "tags": []}


def test_self_is_left_out_and_var_args_are_flattened() -> None:
    class Tool:
        def run(self, cmd: str, *args: str, **options: Any) -> None: ...

    tool = Tool()
    call = _core.bind_call(Tool.run, (tool, "ls", "-l", "/tmp"), {"colour": True})
    assert call.params == {"cmd": "ls", "args": ["-l", "/tmp"], "colour": True}
    args, kwargs = call.apply(call.params)
    assert args == (tool, "ls", "-l", "/tmp") and kwargs == {"colour": True}


def test_unchanged_arguments_keep_their_python_objects() -> None:
    tags = ("pii", "eu")
    call = _core.bind_call(export, ("customers",), {"tags": tags})
    args, kwargs = call.apply({"table": "customers", "rows": 100, "tags": ["pii", "eu"]})
    assert kwargs["tags"] is tags and args == ("customers", 100)


def test_edited_params_are_applied_by_name() -> None:
    call = _core.bind_call(export, ("customers",), {"rows": 5000})
    args, kwargs = call.apply({"table": "customers", "rows": 500, "tags": []})
    assert args == ("customers", 500) and kwargs == {"tags": ()}


def test_edited_var_args_and_kwargs_are_applied() -> None:
    def run(cmd: str, *args: str, **options: Any) -> None: ...

    call = _core.bind_call(run, ("rm", "-rf", "/data"), {"force": True})
    args, kwargs = call.apply({"cmd": "rm", "args": ["-r", "/data/tmp"], "force": False})
    assert args == ("rm", "-r", "/data/tmp") and kwargs == {"force": False}


def test_approved_params_that_do_not_fit_are_refused() -> None:
    call = _core.bind_call(export, ("customers",), {"rows": 5000})
    with pytest.raises(ParamsMismatch, match="limit"):  # an argument the function does not take
        call.apply({"table": "customers", "rows": 5, "tags": [], "limit": 1})
    with pytest.raises(ParamsMismatch, match="rows"):  # an argument left out: never guess its value
        call.apply({"table": "customers", "tags": []})

    def run(*args: str) -> None: ...

    with pytest.raises(ParamsMismatch, match="list"):
        _core.bind_call(run, ("a",), {}).apply({"args": "a b"})


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (object(), "table"),
        ({"a", "b"}, "table"),
        (b"bytes", "table"),
        (float("nan"), "table"),
        (2**60, "table"),
    ],
)
def test_unserialisable_arguments_name_the_parameter(value: Any, name: str) -> None:
    with pytest.raises(UnserializableArguments) as caught:
        _core.bind_call(export, (value,), {})
    assert caught.value.parameter == name
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, KeyturnError)
    assert repr(name) in str(caught.value)


def test_options_are_values_or_callables_of_the_params() -> None:
    params = {"table": "customers", "rows": 5}
    assert (
        _core.evaluate(lambda table, **_: f"postgres://prod/{table}", params, "")
        == "postgres://prod/customers"
    )
    assert _core.evaluate("fixed", params, "") == "fixed"
    assert _core.evaluate(None, params, "default") == "default"


# --- refusals --------------------------------------------------------------------------------------------


def _view(status: str, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "req_1",
        "status": status,
        "verdict": {"reason": None, "rules": []},
        "reviews": [],
        "created_at": "2026-01-01T10:00:00+00:00",
        "expires_at": "2026-01-01T10:15:00+00:00",
        "still_needed": [],
    }
    return {**base, **extra}


def test_denied_by_a_reviewer_names_the_reviewer_and_the_comment() -> None:
    view = _view(
        "denied",
        reviews=[
            {"reviewer": "user:alice@example.com", "decision": "approve", "comment": "fine"},
            {
                "reviewer": "user:dba@example.com",
                "decision": "deny",
                "comment": "use the staging replica instead",
            },
        ],
    )
    denied = _core.denial(view)
    assert (
        str(denied) == denied.for_model() == "denied by user:dba@example.com: use the staging replica instead"
    )
    assert (denied.reviewer, denied.comment, denied.status) == (
        "user:dba@example.com",
        "use the staging replica instead",
        "denied",
    )


def test_denied_by_policy_gives_the_reason() -> None:
    view = _view("denied", verdict={"reason": "Friday change freeze", "rules": [{"rule": "change freeze"}]})
    denied = _core.denial(view)
    assert denied.for_model() == "denied by policy (Friday change freeze)" and denied.reviewer is None


def test_expired_says_how_long_nobody_approved() -> None:
    history = [{"type": "request.expired", "payload": {"still_needed": ["1 from security"]}}]
    denied = _core.denial(_view("expired", history=history))
    assert denied.for_model() == "expired: nobody approved within 15m (still needed: 1 from security)"


def test_cancelled_names_who_and_why() -> None:
    history = [{"type": "request.cancelled", "actor": "agent:bot", "payload": {"reason": "user gave up"}}]
    assert str(_core.denial(_view("cancelled", history=history))) == "cancelled by agent:bot: user gave up"


def test_a_runnable_view_without_a_grant_is_not_runnable() -> None:
    with pytest.raises(KeyturnError, match="no grant"):
        _core.check_runnable(_view("approved"))
    with pytest.raises(Denied):
        _core.check_runnable(_view("expired"))
    with pytest.raises(KeyturnError, match="succeeded"):
        _core.check_runnable(_view("succeeded", grant="x"))
    assert _core.check_runnable(_view("allowed", grant="tok")) == "tok"


# --- digests and configuration ---------------------------------------------------------------------------


def test_output_digest_is_sha256_of_canonical_json() -> None:
    assert (
        _core.digest({"b": 1, "a": [1.0, "x"]})
        == "sha256:" + hashlib.sha256(b'{"a":[1,"x"],"b":1}').hexdigest()
    )
    assert _core.digest(object()) is None


def test_a_gate_needs_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYTURN_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="KEYTURN_API_KEY"):
        Gate("http://127.0.0.1:1")
    monkeypatch.setenv("KEYTURN_API_KEY", "kt_secret_value")
    monkeypatch.setenv("KEYTURN_URL", "http://127.0.0.1:9/")
    gate = Gate()
    assert gate.url == "http://127.0.0.1:9" and "kt_secret_value" not in repr(gate)
    gate.close()


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"timeout": -1}, {"on_denied": "ignore"}])
def test_bad_options_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Gate("http://127.0.0.1:9", "key", **kwargs)
    with pytest.raises(ConfigurationError):
        Gate("ftp://example.com", "key")
