"""U+0000 from an in-process caller (the SDK embedded, a CLI command, a script using the service).

The HTTP schemas refuse NUL in every field; an in-process caller builds the model directly. PostgreSQL
cannot store NUL in text (psycopg raises DataError) while SQLite stores it: the model refuses it for every
caller, naming the field, so both backends give the same answer and nothing reaches the database.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from keyturn import workflow
from keyturn.model import ActionRequest, Principal, PrincipalKind
from keyturn.store import Store

AGENT = Principal(id="agent:deploy-bot", kind=PrincipalKind.AGENT)


def request(**fields: Any) -> ActionRequest:
    base: dict[str, Any] = {
        "action": "db.export",
        "resource": "postgres://prod/customers",
        "requester": AGENT,
    }
    return ActionRequest(**(base | fields))


@pytest.mark.parametrize(
    "field, value",
    [
        ("action", "db.\x00export"),
        ("resource", "a\x00b"),
        ("justification", "\x00"),
        ("idempotency_key", "k\x00"),
        ("on_behalf_of", "user:a\x00@example.com"),
    ],
)
def test_a_request_field_with_nul_is_refused_naming_it(
    store: Store, factory: Any, field: str, value: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        insert(store, factory, request(**{field: value}), "req_nul000000001")
    assert f"{field}: contains U+0000" in str(refused.value)
    assert store.get("req_nul000000001") is None  # nothing reached either backend


def test_a_principal_id_with_nul_is_refused(store: Store, factory: Any) -> None:
    with pytest.raises(ValidationError, match="id: contains U"):
        agent = Principal(id="agent:deploy\x00bot", kind=PrincipalKind.AGENT)
        insert(store, factory, request(requester=agent), "req_nul000000002")
    assert store.get("req_nul000000002") is None


def test_the_same_request_without_nul_is_stored_on_both_backends(store: Store, factory: Any) -> None:
    # the control: what the refusals above keep out is otherwise a normal request on either backend
    insert(store, factory, request(resource="a b", idempotency_key="k1"), "req_nulcontrol001")
    assert store.get("req_nulcontrol001") is not None


def insert(store: Store, factory: Any, action_request: ActionRequest, request_id: str) -> None:
    transition = workflow.submit(
        request_id, action_request, factory.review_verdict(), factory.tick(), factory.grant_id()
    )
    store.insert_request(transition, factory.decision(transition), None)
