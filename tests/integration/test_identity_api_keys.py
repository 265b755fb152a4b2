"""Agent API keys against the real store (SQLite and PostgreSQL): create, authenticate, revoke."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keyturn.config import Settings
from keyturn.identity import AuthenticationError, Authenticator, build_authenticator
from keyturn.identity.api_keys import ApiKeyRecord, generate_api_key
from keyturn.model import PrincipalKind
from keyturn.redact import looks_like_secret
from keyturn.store import SqlApiKeyRepository, Store
from keyturn.store.api_keys import AUTH_CACHE_SECONDS

NOW = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)


@pytest.fixture
def repository(store: Store) -> SqlApiKeyRepository:
    return SqlApiKeyRepository(store)


@pytest.fixture
def auth(store: Store, tmp_path: Path) -> Authenticator:
    return build_authenticator(Settings(database="sqlite://", data_dir=tmp_path), store)


def create(
    repository: SqlApiKeyRepository, agent: str = "agent:deploy-bot", *groups: str
) -> tuple[str, ApiKeyRecord]:
    plaintext, record = generate_api_key(agent, list(groups), NOW)
    repository.add(record)
    return plaintext, record


def test_key_format_and_what_is_stored(repository: SqlApiKeyRepository) -> None:
    plaintext, record = create(repository, "agent:deploy-bot", "ci", "deployers", "ci")
    assert re.fullmatch(r"kt_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{43}", plaintext)
    assert plaintext.startswith(record.key_id + "_")
    assert looks_like_secret(plaintext)  # redact.py hides leaked keys from notifications and the ledger
    stored = repository.get(record.key_id)
    assert stored == record
    assert stored is not None and plaintext.split("_", 2)[2] not in stored.secret_hash
    assert stored.secret_hash.startswith("sha256:") and stored.groups == ("ci", "deployers")
    assert stored.kind is PrincipalKind.AGENT


def test_keys_are_only_for_agents() -> None:
    with pytest.raises(ValueError, match="agent principal"):
        generate_api_key("user:alice@example.com", [], NOW)


def test_key_authenticates_its_agent_by_either_header(
    auth: Authenticator, repository: SqlApiKeyRepository
) -> None:
    plaintext, _ = create(repository, "agent:deploy-bot", "deployers")
    for principal in (
        auth.authenticate(None, plaintext),
        auth.authenticate(f"Bearer {plaintext}", None),
        auth.authenticate(f"bearer   {plaintext} ", plaintext),
    ):
        assert principal.id == "agent:deploy-bot"
        assert principal.kind is PrincipalKind.AGENT
        assert principal.groups == {"deployers"} and not principal.roles


def test_wrong_unknown_and_malformed_keys_get_one_answer(
    auth: Authenticator, repository: SqlApiKeyRepository
) -> None:
    plaintext, record = create(repository)
    key_id, secret = record.key_id, plaintext.removeprefix(record.key_id + "_")
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    other_plaintext, _ = generate_api_key("agent:other", [], NOW)  # never stored
    for bad in (
        f"{key_id}_{flipped}",  # right id, wrong secret
        other_plaintext,  # unknown id
        f"{key_id}_{secret[:20]}",  # truncated
        f"{key_id}_{secret}x!",  # junk appended
    ):
        with pytest.raises(AuthenticationError) as caught:
            auth.authenticate(None, bad)
        assert str(caught.value) == "invalid or revoked API key"


def test_revoked_key_is_refused_at_once(auth: Authenticator, repository: SqlApiKeyRepository) -> None:
    plaintext, record = create(repository)
    keep, _ = create(repository, "agent:other")
    assert auth.authenticate(None, plaintext).id == "agent:deploy-bot"
    assert repository.revoke(record.key_id)
    with pytest.raises(AuthenticationError, match="invalid or revoked"):
        auth.authenticate(None, plaintext)
    assert auth.authenticate(None, keep).id == "agent:other"


def test_a_key_revoked_elsewhere_is_refused_within_the_cache_bound(
    store: Store, repository: SqlApiKeyRepository, database_url: str
) -> None:
    """Authentication reuses a key read for AUTH_CACHE_SECONDS (no SELECT per request); a revocation by
    another process (the CLI, another replica: another store object on the same database) is refused once
    that bound has passed, never later."""
    plaintext, record = create(repository)
    clock = [1000.0]
    cached = Authenticator(api_keys=SqlApiKeyRepository(store, monotonic=lambda: clock[0]))
    assert cached.authenticate(None, plaintext).id == "agent:deploy-bot"
    elsewhere = Store.open(database_url)
    try:
        assert SqlApiKeyRepository(elsewhere).revoke(record.key_id)
    finally:
        elsewhere.close()
    clock[0] += AUTH_CACHE_SECONDS / 2
    # still within the bound: the key read before the revocation is reused, no database read
    assert cached.authenticate(None, plaintext).id == "agent:deploy-bot"
    clock[0] += AUTH_CACHE_SECONDS / 2
    with pytest.raises(AuthenticationError, match="invalid or revoked"):
        cached.authenticate(None, plaintext)


def test_missing_and_conflicting_credentials(auth: Authenticator, repository: SqlApiKeyRepository) -> None:
    first, _ = create(repository)
    second, _ = create(repository, "agent:other")
    with pytest.raises(AuthenticationError, match="missing credentials"):
        auth.authenticate(None, None)
    with pytest.raises(AuthenticationError, match="missing credentials"):
        auth.authenticate(None, "  ")
    with pytest.raises(AuthenticationError, match="Bearer <token>"):
        auth.authenticate(f"Basic {first}", None)
    with pytest.raises(AuthenticationError, match="Bearer <token>"):
        auth.authenticate("Bearer", None)
    with pytest.raises(AuthenticationError, match="send one credential"):
        auth.authenticate(f"Bearer {first}", second)
    with pytest.raises(AuthenticationError, match="unrecognised credential"):
        auth.authenticate("Bearer hunter2", None)
    with pytest.raises(AuthenticationError, match="too long"):
        auth.authenticate(None, "kt_" + "a" * 20_000)


def test_user_tokens_without_a_users_file_are_refused(auth: Authenticator) -> None:
    with pytest.raises(AuthenticationError, match="no users file"):
        auth.authenticate(None, "ktu_abcdefgh_" + "x" * 43)


def test_the_caller_comes_only_from_headers(auth: Authenticator) -> None:
    """`authenticate` takes the two headers and nothing else: no body field can choose the requester."""
    import inspect

    assert list(inspect.signature(auth.authenticate).parameters) == ["authorization", "x_api_key"]
