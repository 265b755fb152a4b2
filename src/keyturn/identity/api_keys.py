"""Agent API keys: `kt_<id>_<secret>`, stored hashed in the database (`keyturn api-keys create|list|revoke`).

`SqlApiKeyRepository` (keyturn.store.api_keys) implements `ApiKeyRepository`. An API key always
authenticates an *agent*: a key is a bearer secret that a program holds, and agents never review.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from keyturn.identity.errors import AuthenticationError
from keyturn.identity.tokens import API_KEY_PREFIX, hash_token, new_token, parse_token, token_matches
from keyturn.model import Principal, PrincipalKind, canonical_principal_id
from keyturn.store.records import ApiKeyRecord

__all__ = ["ApiKeyRecord", "ApiKeyRepository", "authenticate_api_key", "generate_api_key"]

INVALID_KEY = "invalid or revoked API key"


class ApiKeyRepository(Protocol):
    def get(self, key_id: str) -> ApiKeyRecord | None: ...

    def get_recent(self, key_id: str) -> ApiKeyRecord | None:
        """`get`, or a copy read a few seconds ago at most: the bound on how late a revocation made
        elsewhere takes effect (`keyturn.store.api_keys.AUTH_CACHE_SECONDS`)."""
        ...

    def add(self, record: ApiKeyRecord) -> None: ...

    def revoke(self, key_id: str) -> bool: ...

    def list(self) -> list[ApiKeyRecord]: ...


def generate_api_key(principal_id: str, groups: Sequence[str], now: datetime) -> tuple[str, ApiKeyRecord]:
    """A new key: the plaintext (show it once) and the record to store (hash only)."""
    principal_id = canonical_principal_id(principal_id)  # ValueError says what is ambiguous about it
    if not principal_id.startswith("agent:") or len(principal_id) <= len("agent:"):
        raise ValueError(f"an API key belongs to an agent principal like 'agent:NAME', not {principal_id!r}")
    key_id, plaintext = new_token(API_KEY_PREFIX)
    record = ApiKeyRecord(
        key_id=key_id,
        principal_id=principal_id,
        kind=PrincipalKind.AGENT,
        groups=tuple(sorted(set(groups))),
        secret_hash=hash_token(plaintext),
        created_at=now,
    )
    return plaintext, record


def authenticate_api_key(repository: ApiKeyRepository, plaintext: str) -> Principal:
    """The agent a key belongs to. Unknown, malformed, wrong and revoked keys all get the same error."""
    parsed = parse_token(plaintext)
    if parsed is None or parsed[0] != API_KEY_PREFIX:
        raise AuthenticationError(INVALID_KEY)
    record = repository.get_recent(parsed[1])
    if record is None:
        token_matches(plaintext, "sha256:" + "0" * 64)  # same work as a real check
        raise AuthenticationError(INVALID_KEY)
    if not token_matches(plaintext, record.secret_hash) or record.revoked_at is not None:
        raise AuthenticationError(INVALID_KEY)
    return Principal(id=record.principal_id, kind=PrincipalKind.AGENT, groups=frozenset(record.groups))
