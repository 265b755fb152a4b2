"""Console sessions: hashed at rest, idle and absolute timeouts, revocation, cookie policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyturn.identity.sessions import ConsoleSessions, SessionRefused, cookie_policy, session_hash
from keyturn.model import Authentication, AuthMethod, Principal, PrincipalKind
from keyturn.store import Store
from keyturn.store.console import SqlConsoleRepository


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def sessions(tmp_path: Path) -> ConsoleSessions:
    store = Store.open(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    clock = Clock()
    made = ConsoleSessions(
        SqlConsoleRepository(store, clock=clock),
        idle_timeout=timedelta(minutes=30),
        absolute_timeout=timedelta(hours=2),
        clock=clock,
    )
    made.clock = clock  # type: ignore[attr-defined]
    return made


ALICE = Principal(
    id="user:alice@example.com",
    kind=PrincipalKind.HUMAN,
    groups=frozenset({"sre"}),
    authn=Authentication(method=AuthMethod.OIDC, at=datetime(2030, 1, 7, 8, 59, tzinfo=UTC), amr=("pwd",)),
)


def test_the_session_keeps_the_principal_and_how_it_logged_in(sessions: ConsoleSessions) -> None:
    token, _ = sessions.create(ALICE, "test")
    active = sessions.authenticate(token)
    assert active.principal == ALICE
    assert active.principal.authn is not None and active.principal.authn.amr == ("pwd",)
    # Only the hash is stored: the row's id is not the cookie.
    assert active.id_hash == session_hash(token) != token


def test_idle_and_absolute_timeouts(sessions: ConsoleSessions) -> None:
    clock: Clock = sessions.clock  # type: ignore[attr-defined]
    token, _ = sessions.create(ALICE, "test")
    for _ in range(3):  # used every 29 minutes: stays alive
        clock.now += timedelta(minutes=29)
        sessions.authenticate(token)
    clock.now += timedelta(minutes=30)
    with pytest.raises(SessionRefused, match="idle"):
        sessions.authenticate(token)

    token, _ = sessions.create(ALICE, "test")
    for _ in range(4):
        clock.now += timedelta(minutes=29)
        sessions.authenticate(token)
    clock.now += timedelta(minutes=5)  # 2h01 after login, though used 5 minutes ago
    with pytest.raises(SessionRefused, match="expired"):
        sessions.authenticate(token)


def test_revoked_and_unknown_sessions_are_refused(sessions: ConsoleSessions) -> None:
    token, active = sessions.create(ALICE, "test")
    bob = ALICE.model_copy(update={"id": "user:bob@example.com"})
    assert not sessions.revoke(active.id_hash, bob, any_user=False)  # not bob's
    sessions.authenticate(token)
    assert sessions.revoke(active.id_hash, ALICE, any_user=False)
    with pytest.raises(SessionRefused, match="ended"):
        sessions.authenticate(token)
    for bad in (None, "", "kts_" + "x" * 43, "not-a-session", "kts_" + "y" * 200):
        with pytest.raises(SessionRefused):
            sessions.authenticate(bad)


def test_cookie_policy() -> None:
    assert cookie_policy("https://keyturn.example.com").name == "__Host-keyturn_session"
    assert cookie_policy("https://keyturn.example.com").secure
    dev = cookie_policy("http://127.0.0.1:8300")
    assert dev.name == "keyturn_session" and not dev.secure
    assert not cookie_policy("http://localhost:8300").secure
    with pytest.raises(ValueError, match="https"):
        cookie_policy("http://keyturn.example.com")
