"""Domain values refuse what RFC 8785 cannot represent exactly, for in-process callers as well as the API."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from keyturn.model import ActionRequest, Principal, PrincipalKind, canonical_json, params_digest

AGENT = Principal(id="agent:bot", kind=PrincipalKind.AGENT)


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"rows": 2**53}, "params.rows"),
        ({"nested": {"size": 1e17}}, "params.nested.size"),
        ({"x": math.nan}, "params.x"),
        ({"items": [1, "\ud800"]}, "params.items[1]"),
    ],
)
def test_values_canonical_json_cannot_hold_are_refused_with_their_path(
    params: dict[str, Any], where: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        ActionRequest(action="db.export", params=params, requester=AGENT)
    assert where in str(caught.value)


def test_context_is_checked_too() -> None:
    with pytest.raises(ValidationError, match=r"context\.trace"):
        ActionRequest(action="db.export", context={"trace": -(2**60)}, requester=AGENT)


def test_safe_values_digest_stably() -> None:
    request = ActionRequest(
        action="db.export", params={"rows": 2**53 - 1, "ratio": 0.5, "name": "ünï"}, requester=AGENT
    )
    assert params_digest(request.params) == params_digest(dict(reversed(list(request.params.items()))))
    assert (
        canonical_json(request.params) == b'{"name":"\xc3\xbcn\xc3\xaf","ratio":0.5,"rows":9007199254740991}'
    )
