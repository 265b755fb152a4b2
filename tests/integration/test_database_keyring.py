"""`DatabaseKeyRing`: the server's keys in the database, sealed under a key-encryption key (SQLite and
PostgreSQL): shared by every ring on one database (replicas), refused under another KEK or when altered."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, text, update

from keyturn.signing_keys import (
    DatabaseKeyRing,
    DirectoryKeyRing,
    KeyRingError,
    kek_id,
    new_kek,
    parse_kek,
)
from keyturn.store import SqlServerKeyRepository, Store
from keyturn.store.schema import server_keys

KEK = parse_kek(new_kek())


def ring(store: Store, kek: bytes = KEK, **kwargs: object) -> DatabaseKeyRing:
    return DatabaseKeyRing(SqlServerKeyRepository(store), kek, **kwargs)  # type: ignore[arg-type]


def test_rings_on_one_database_share_one_key_per_purpose_even_when_created_at_once(store: Store) -> None:
    rings = [ring(store) for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        kids = set(pool.map(lambda r: r.signing_key("grant").kid, rings))
    assert len(kids) == 1
    assert ring(store).signing_key("grant").kid in kids
    assert [k.state for k in ring(store).list_keys() if k.purpose == "grant"] == ["current"]


def test_the_private_key_is_sealed(store: Store) -> None:
    key = ring(store).signing_key("grant")
    raw = key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    with store.engine.connect() as conn:
        dumped = " ".join(str(v) for row in conn.execute(select(server_keys)).all() for v in row)
    for encoding in (base64.urlsafe_b64encode, base64.b64encode):
        assert encoding(raw).decode().rstrip("=") not in dumped
    assert raw.hex() not in dumped


def test_another_key_encryption_key_is_refused_with_both_ids(store: Store) -> None:
    ring(store).prepare()
    other = parse_kek(new_kek())
    with pytest.raises(KeyRingError, match=f"sealed under key-encryption key {kek_id(KEK)}.*{kek_id(other)}"):
        ring(store, other).signing_key("grant")


def test_an_altered_row_is_refused(store: Store) -> None:
    kid = ring(store).signing_key("grant").kid
    with store.engine.begin() as conn:
        sealed = conn.execute(select(server_keys.c.sealed).where(server_keys.c.kid == kid)).scalar_one()
        flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
        conn.execute(update(server_keys).where(server_keys.c.kid == kid).values(sealed=flipped))
    with pytest.raises(KeyRingError, match=f"key {kid} does not decrypt"):
        ring(store).signing_key("grant")


def test_a_sealed_key_moved_to_another_purpose_does_not_decrypt(store: Store) -> None:
    r = ring(store)
    grant, ledger = r.signing_key("grant"), r.signing_key("ledger")
    with store.engine.begin() as conn:
        sealed = conn.execute(select(server_keys.c.sealed).where(server_keys.c.kid == grant.kid)).scalar_one()
        conn.execute(update(server_keys).where(server_keys.c.kid == ledger.kid).values(sealed=sealed))
    with pytest.raises(KeyRingError, match="does not decrypt"):
        ring(store).signing_key("ledger")


def test_rotate_and_retire(store: Store) -> None:
    r = ring(store)
    old = r.signing_key("grant").kid
    new = r.rotate("grant").kid
    assert r.signing_key("grant").kid == new
    assert set(r.public_key_map("grant")) == {old, new}
    with pytest.raises(KeyRingError, match="current grant key: rotate"):
        r.retire(new)
    r.retire(old)
    assert set(r.public_key_map("grant")) == {new}
    assert {(k.kid, k.state) for k in r.list_keys() if k.purpose == "grant"} == {
        (old, "retired"),
        (new, "current"),
    }
    with pytest.raises(KeyRingError, match="no verifying key"):
        r.retire(old)
    assert {k["kid"] for k in r.jwks()["keys"] if k["keyturn_purpose"] == "grant"} == {new}


def test_a_peers_rotation_is_seen_at_the_first_unknown_kid(store: Store) -> None:
    here = ring(store, refresh_seconds=3600)
    peer = ring(store)
    here.prepare()
    new = peer.rotate("grant").kid
    assert here.signing_key("grant").kid != new  # not refreshed yet (an hour) …
    assert new in here.public_key_map("grant")  # … but a kid it does not know is looked up


def test_symmetric_keys_fit_the_same_table_and_are_shared(store: Store) -> None:
    first = ring(store).secret_key("redaction")
    assert len(first.secret) == 32
    assert ring(store).secret_key("redaction") == first
    assert all(k["keyturn_purpose"] != "redaction" for k in ring(store).jwks()["keys"])
    rotated = ring(store).rotate("redaction")
    assert rotated.algorithm == "HMAC-SHA256"
    assert set(ring(store).secret_keys("redaction")) == {first.kid, rotated.kid}


def test_keys_of_an_existing_data_dir_are_imported_once(store: Store, tmp_path: Path) -> None:
    directory = DirectoryKeyRing(tmp_path / "data")
    old = directory.signing_key("grant")
    current = directory.rotate("grant")
    imported = ring(store, import_from=tmp_path / "data")
    assert imported.signing_key("grant").kid == current.kid
    assert set(imported.public_key_map("grant")) == {old.kid, current.kid}
    assert imported.signing_key("grant").private_key.public_key() == directory.signing_key("grant").public_key


def test_a_bad_key_encryption_key_says_how_to_make_one() -> None:
    for bad in ("", "short", base64.b64encode(b"x" * 31).decode(), "not base64 at all!!"):
        with pytest.raises(KeyRingError, match=r"32 random bytes.*new-kek"):
            parse_kek(bad)
    assert len(parse_kek(base64.b64encode(b"k" * 32).decode() + "\n")) == 32  # a file's newline is fine


def test_repository_counts_rows(store: Store) -> None:
    assert SqlServerKeyRepository(store).count() == 0
    ring(store).prepare()
    assert SqlServerKeyRepository(store).count() == 2
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM server_keys WHERE state = 'current'")).scalar() == 2


def test_the_redaction_key_is_shared_by_replicas_and_rotates(store: Store) -> None:
    first = ring(store).redaction_key()
    assert ring(store).redaction_key() == first  # another replica, same database and KEK
    rotated = ring(store).rotate_redaction_key()
    assert rotated != first
    assert set(ring(store).redaction_keys()) == {first.kid, rotated.kid}  # old digests still check
    redactor = ring(store).redactor()
    assert redactor.key == rotated
