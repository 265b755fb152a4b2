"""Chat accounts in the database (SQLite and PostgreSQL): one-time link codes, links, seen signatures."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from keyturn.store import Store
from keyturn.store.chat import ChatAccounts, LinkCodeInvalid

NOW = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
TTL = timedelta(minutes=15)


def test_a_code_links_once_and_only_before_it_expires(store: Store) -> None:
    accounts = ChatAccounts(store)
    code = accounts.new_code("slack", "T1", "U1", NOW, TTL)
    assert code.startswith("ktl_") and code not in str(store.engine.url)
    link = accounts.redeem(code, "user:alice@example.com", NOW + timedelta(minutes=1))
    assert (link.team_id, link.user_id, link.principal_id, link.method) == (
        "T1",
        "U1",
        "user:alice@example.com",
        "code",
    )
    assert accounts.link("slack", "T1", "U1") == link
    with pytest.raises(LinkCodeInvalid):
        accounts.redeem(code, "user:mallory@example.com", NOW + timedelta(minutes=2))  # used
    assert accounts.link("slack", "T1", "U1").principal_id == "user:alice@example.com"  # type: ignore[union-attr]
    late = accounts.new_code("slack", "T1", "U2", NOW, TTL)
    with pytest.raises(LinkCodeInvalid):
        accounts.redeem(late, "user:alice@example.com", NOW + TTL)  # expired
    with pytest.raises(LinkCodeInvalid):
        accounts.redeem("ktl_made_up_code_xxxxxxxx", "user:alice@example.com", NOW)
    assert [x.user_id for x in accounts.links_of("user:alice@example.com")] == ["U1"]
    assert not accounts.unlink("slack", "T1", "U1", "user:mallory@example.com")  # only your own
    assert accounts.unlink("slack", "T1", "U1", "user:alice@example.com")
    assert accounts.link("slack", "T1", "U1") is None


def test_two_redeemers_racing_on_one_code_link_once(store: Store) -> None:
    accounts = ChatAccounts(store)
    code = accounts.new_code("slack", "T1", "U9", NOW, TTL)
    winners: list[str] = []
    barrier = threading.Barrier(4)

    def redeem(who: str) -> None:
        barrier.wait()
        try:
            accounts.redeem(code, who, NOW)
            winners.append(who)
        except LinkCodeInvalid:
            pass

    threads = [threading.Thread(target=redeem, args=(f"user:u{i}@example.com",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert accounts.link("slack", "T1", "U9").principal_id == winners[0]  # type: ignore[union-attr]


def test_a_signature_is_seen_once(store: Store) -> None:
    accounts = ChatAccounts(store)
    assert accounts.first_sight("v0=abc", "1700000000", NOW)
    assert not accounts.first_sight("v0=abc", "1700000000", NOW + timedelta(seconds=30))
    assert accounts.first_sight("v0=abc", "1700000001", NOW)  # another timestamp: another request
    # rows older than the retention are pruned (Slack's 5-minute window refuses such requests anyway)
    assert accounts.first_sight("v0=abc", "1700000000", NOW + timedelta(minutes=11))
