"""The ledger tables: exact leaf bytes and hashes, event paging, checkpoints and ledger keys."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn import workflow
from keyturn.model import Event, EventType
from keyturn.store import Store, StoreError
from keyturn.store.records import canonical_payload, encode_ts, event_leaf, leaf_bytes

if TYPE_CHECKING:
    from conftest import RequestFactory


def test_leaf_bytes_are_canonical_json_with_microsecond_utc_timestamps() -> None:
    at = datetime(2030, 1, 7, 11, 0, 1, 5, tzinfo=timezone(timedelta(hours=2)))
    leaf = leaf_bytes(7, at, "request.cancelled", "agent:a", "req_1", {"reason": "é", "b": 1.0, "a": None})
    assert leaf == (
        b'{"actor":"agent:a","payload":{"a":null,"b":1,"reason":"\xc3\xa9"},"request_id":"req_1",'
        b'"seq":7,"ts":"2030-01-07T09:00:01.000005Z","type":"request.cancelled"}'
    )
    assert encode_ts(datetime(2030, 1, 7, tzinfo=UTC)) == "2030-01-07T00:00:00.000000Z"
    with pytest.raises(ValueError):
        encode_ts(datetime(2030, 1, 7))


def test_stored_events_carry_their_leaf_hash(store: Store, factory: RequestFactory) -> None:
    submitted = factory.submit(factory.allow_verdict())
    store.insert_request(submitted, factory.decision(submitted), None)
    stored = store.events()
    assert [e.type for e in stored] == [e.type.value for e in submitted.events]
    for event, original in zip(stored, submitted.events, strict=True):
        assert (event.ts, event.actor, event.request_id, event.payload) == (
            original.ts,
            original.actor,
            original.request_id,
            original.payload,
        )
        expected = leaf_bytes(
            event.seq, original.ts, original.type.value, original.actor, original.request_id, original.payload
        )
        assert event.leaf_bytes() == expected
        assert event.leaf_hash == hashlib.sha256(b"\x00" + expected).hexdigest()


def test_events_page_by_seq(store: Store, factory: RequestFactory) -> None:
    records = [factory.insert(store) for _ in range(5)]  # two events each
    store.apply(workflow.cancel(records[0], factory.agent, factory.tick()), records[0].version)
    assert store.head_seq() == 10
    assert [e.seq for e in store.events(limit=4)] == [0, 1, 2, 3]
    assert [e.seq for e in store.events(after_seq=3, limit=4)] == [4, 5, 6, 7]
    assert [e.seq for e in store.events(after_seq=7)] == [8, 9, 10]
    assert store.events(after_seq=10) == []
    assert store.leaf_hashes(after_seq=7) == [bytes.fromhex(e.leaf_hash) for e in store.events(after_seq=7)]
    assert len(store.leaf_hashes()) == 11 and len(store.leaf_hashes(limit=3)) == 3
    assert [e.seq for e in store.events_for_request(records[0].id)] == [0, 1, 10]
    assert store.events_for_request("req_other") == []


def test_a_large_batch_of_events_is_stored_exactly(store: Store, factory: RequestFactory) -> None:
    """Many events in one transaction (PostgreSQL streams them with COPY): same rows, leaves and hashes."""
    submitted = factory.submit(factory.allow_verdict())
    store.insert_request(submitted, factory.decision(submitted), None)
    head = store.head_seq()
    zone = timezone(timedelta(hours=-3))
    batch = tuple(
        Event(
            type=EventType.SUCCEEDED,
            actor=f"agent:é{i}",
            request_id=None if i % 3 == 0 else submitted.record.id,
            payload={
                "i": i,
                "note": 'tab\t "quoted" \u2028 \U0001f600',
                "f": i / 7,
                "nested": {"b": [1, None]},
            },
            ts=datetime(2030, 1, 7, 9, 0, i % 60, i, tzinfo=UTC if i % 2 else zone),
        )
        for i in range(150)
    )
    with store._write() as tx:
        store._append_events(tx.conn, batch)
    stored = store.events(after_seq=head)
    assert [e.seq for e in stored] == list(range(head + 1, head + 151))
    for event, original in zip(stored, batch, strict=True):
        assert (event.ts, event.actor, event.request_id, event.payload) == (
            original.ts,
            original.actor,
            original.request_id,
            original.payload,
        )
        leaf = _reference_leaf(
            event.seq, original.ts, original.type.value, original.actor, original.request_id, original.payload
        )
        assert event.leaf_bytes() == leaf
        assert event.leaf_hash == hashlib.sha256(b"\x00" + leaf).hexdigest()


def test_checkpoints(store: Store, factory: RequestFactory) -> None:
    assert store.checkpoints() == []
    assert store.add_checkpoint(10, "ab" * 32, "note 10", "ledger-1", factory.now)
    assert store.add_checkpoint(2, "cd" * 32, "note 2", "ledger-1", factory.tick())
    assert not store.add_checkpoint(10, "ef" * 32, "another replica's", "ledger-2", factory.tick())
    sizes = [(c.size, c.root_hash, c.note, c.key_name) for c in store.checkpoints()]
    assert sizes == [(2, "cd" * 32, "note 2", "ledger-1"), (10, "ab" * 32, "note 10", "ledger-1")]
    assert store.checkpoints()[1].created_at == datetime(2030, 1, 7, 9, 0, tzinfo=UTC)


def test_ledger_keys(store: Store, factory: RequestFactory) -> None:
    store.add_ledger_key("ledger-1", "MCowBQYDK2VwAyEA…", factory.now)
    store.add_ledger_key("ledger-2", "MCowBQYDK2VwAyEB…", factory.tick())
    with pytest.raises(StoreError):
        store.add_ledger_key("ledger-1", "other", factory.tick())
    assert store.retire_ledger_key("ledger-1", factory.tick())
    assert not store.retire_ledger_key("ledger-1", factory.tick())  # retired once, at the first time
    assert not store.retire_ledger_key("nope", factory.tick())
    keys = {k.name: k for k in store.ledger_keys()}
    assert keys["ledger-1"].public_key == "MCowBQYDK2VwAyEA…"
    assert keys["ledger-1"].retired_at == datetime(2030, 1, 7, 9, 0, 3, tzinfo=UTC)
    assert keys["ledger-2"].retired_at is None


# --- the fast leaf encoder is byte-for-byte the reference -----------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)  # straddles the RFC 8785 range: both must refuse
    | st.floats(allow_nan=True, allow_infinity=True)  # NaN/inf: both must refuse
    | st.text()
    | st.text(st.characters(codec="utf-8") | st.sampled_from('\x00\x1f\x7f"\\\u2028\ue000\U0001f600'))
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(["\ue000", "\U0001f600", "a", "é"]), inner, max_size=4
        )
    ),
    max_leaves=20,
)
_zones = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))])


def _reference_leaf(
    seq: int, ts: datetime, type: str, actor: str, request_id: str | None, payload: object
) -> bytes:
    """The definition: rfc8785 over the whole event, `ts` spelled by strftime."""
    return bytes(
        rfc8785.dumps(
            {
                "seq": seq,
                "ts": ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "type": type,
                "actor": actor,
                "request_id": request_id,
                "payload": payload,  # type: ignore[dict-item]
            }
        )
    )


def _outcome(produce: Callable[[], object]) -> object:
    try:
        return produce()
    except (ValueError, TypeError, RecursionError) as exc:  # CanonicalizationError is a ValueError
        return type(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq=st.integers(min_value=0, max_value=2**54),
    ts=st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 30), timezones=_zones),
    type=st.text(max_size=12),
    actor=st.text(max_size=12),
    request_id=st.none() | st.text(max_size=12),
    payload=st.dictionaries(st.text(max_size=8), _json_values, max_size=5),
)
def test_fast_leaf_equals_rfc8785_of_the_whole_event(
    seq: int, ts: datetime, type: str, actor: str, request_id: str | None, payload: dict[str, Any]
) -> None:
    expected = _outcome(lambda: _reference_leaf(seq, ts, type, actor, request_id, payload))
    assert _outcome(lambda: leaf_bytes(seq, ts, type, actor, request_id, payload)) == expected
    fast = _outcome(lambda: event_leaf(seq, ts, type, actor, request_id, payload))
    if isinstance(expected, bytes):
        assert fast == (expected, bytes(rfc8785.dumps(payload)))
    else:
        assert fast == expected


@settings(max_examples=300, deadline=None)
@given(payload=_json_values)
def test_canonical_payload_equals_rfc8785(payload: object) -> None:
    assert _outcome(lambda: canonical_payload(payload)) == _outcome(lambda: bytes(rfc8785.dumps(payload)))  # type: ignore[arg-type]


def test_fast_leaf_edge_cases() -> None:
    at = datetime(2030, 1, 7, 9, 0, 1, tzinfo=UTC)
    for payload in (
        {"n": 2**53 - 1, "m": -(2**53) + 1, "f": 1e21, "g": 1e-7, "h": -0.0, "i": 5e-324},
        {"\U0001f600": 1, "\ue000": 2, "z": [True, False, None, "", "\u2028\x00\x7f"]},
        {"nested": {"b": {"d": [], "c": {}}, "a": [1, [2, [3]]]}},
        {"big": 2**53},  # outside the RFC 8785 integer range: refused like the reference
        {"bad": "\ud800"},  # a lone surrogate: refused like the reference
        {"t": (1, 2)},
    ):
        expected = _outcome(lambda p=payload: _reference_leaf(3, at, "t", "a", None, p))  # type: ignore[misc]
        assert _outcome(lambda p=payload: leaf_bytes(3, at, "t", "a", None, p)) == expected, payload  # type: ignore[misc]
    assert encode_ts(datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == datetime(999, 1, 2, 3, 4, 5, 6).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
