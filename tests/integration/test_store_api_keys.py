"""`SqlApiKeyRepository`: API keys round-trip, revocation happens once, ids are unique."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keyturn.model import Frozen, PrincipalKind
from keyturn.store import SqlApiKeyRepository, Store, StoreError


def _api_key_record_type() -> Any:
    try:
        from keyturn.identity.api_keys import ApiKeyRecord
    except ModuleNotFoundError as exc:
        if exc.name not in ("keyturn.identity", "keyturn.identity.api_keys"):
            raise
    else:
        return ApiKeyRecord

    # Stand-in until keyturn.identity.api_keys exists, shaped as its protocol was described. Remove it then:
    # the test will run against the real record type.
    class StandInApiKeyRecord(Frozen):
        key_id: str
        principal_id: str
        kind: PrincipalKind
        groups: tuple[str, ...]
        secret_hash: str
        created_at: datetime
        revoked_at: datetime | None = None

    return StandInApiKeyRecord


ApiKeyRecord = _api_key_record_type()
T0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _identity_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if ApiKeyRecord.__name__ == "StandInApiKeyRecord":
        module = types.ModuleType("keyturn.identity.api_keys")
        module.ApiKeyRecord = ApiKeyRecord  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "keyturn.identity.api_keys", module)
    yield


def key(key_id: str, *, minutes: int = 0, groups: tuple[str, ...] = ("deployers",)) -> Any:
    return ApiKeyRecord(
        key_id=key_id,
        principal_id=f"agent:{key_id}",
        kind=PrincipalKind.AGENT,
        groups=groups,
        secret_hash="scrypt$n=16384$c2FsdA$aGFzaA",
        created_at=T0 + timedelta(minutes=minutes),
        revoked_at=None,
    )


@pytest.fixture
def repository(store: Store) -> SqlApiKeyRepository:
    return SqlApiKeyRepository(store, clock=lambda: T0 + timedelta(days=1))


def test_keys_round_trip(repository: SqlApiKeyRepository) -> None:
    record = key("kt_a", groups=("deployers", "ci"))
    repository.add(record)
    stored = repository.get("kt_a")
    assert stored is not None
    assert (stored.key_id, stored.principal_id, stored.secret_hash) == (
        "kt_a",
        "agent:kt_a",
        record.secret_hash,
    )
    assert stored.kind == PrincipalKind.AGENT and sorted(stored.groups) == ["ci", "deployers"]
    assert stored.created_at == T0 and stored.revoked_at is None
    assert repository.get("kt_missing") is None


def test_key_ids_are_unique(repository: SqlApiKeyRepository) -> None:
    repository.add(key("kt_a"))
    with pytest.raises(StoreError):
        repository.add(key("kt_a", minutes=5))
    assert [k.created_at for k in repository.list()] == [T0]


def test_list_is_oldest_first(repository: SqlApiKeyRepository) -> None:
    for key_id, minutes in (("kt_c", 2), ("kt_a", 0), ("kt_b", 1)):
        repository.add(key(key_id, minutes=minutes))
    assert [k.key_id for k in repository.list()] == ["kt_a", "kt_b", "kt_c"]


def test_revoke_happens_once(repository: SqlApiKeyRepository) -> None:
    repository.add(key("kt_a"))
    repository.add(key("kt_b"))
    assert repository.revoke("kt_a")
    assert not repository.revoke("kt_a")
    assert not repository.revoke("kt_missing")
    revoked, other = repository.get("kt_a"), repository.get("kt_b")
    assert revoked is not None and revoked.revoked_at == T0 + timedelta(days=1)
    assert other is not None and other.revoked_at is None
