"""`KeyRing`: Ed25519 keys on disk — generation, permissions, rotation, and several processes at once."""

from __future__ import annotations

import base64
import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keyturn.signing_keys import DirectoryKeyRing as KeyRing
from keyturn.signing_keys import KeyRingError, thumbprint


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_generates_private_keys(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "keyturn-data"
    old_umask = os.umask(0)  # a permissive umask must not widen the key files
    try:
        ring = KeyRing(data_dir)
        key = ring.signing_key("grant")
    finally:
        os.umask(old_umask)
    assert mode(data_dir) == 0o700 and mode(data_dir / "grant") == 0o700
    pem = data_dir / "grant" / f"{key.kid}.pem"
    assert mode(pem) == 0o600
    assert b"PRIVATE KEY" in pem.read_bytes()
    assert key.kid == thumbprint(key.public_key) and key.purpose == "grant"
    signature = key.private_key.sign(b"hello")
    key.public_key.verify(signature, b"hello")
    assert ring.signing_key("ledger").kid != key.kid  # one key per purpose

    again = KeyRing(data_dir).signing_key("grant")  # a restart loads, it does not regenerate
    assert (again.kid, again.created_at) == (key.kid, key.created_at)


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its Ed25519 example key.
    x = base64.urlsafe_b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    assert thumbprint(Ed25519PublicKey.from_public_bytes(x)) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604])
def test_refuses_a_private_key_others_can_read(tmp_path: Path, loose: int) -> None:
    kid = KeyRing(tmp_path).signing_key("grant").kid
    pem = tmp_path / "grant" / f"{kid}.pem"
    pem.chmod(loose)
    with pytest.raises(KeyRingError, match=r"accessible to group/others.*chmod 600"):
        KeyRing(tmp_path).signing_key("grant")


def test_refuses_a_corrupt_or_foreign_key_file(tmp_path: Path) -> None:
    kid = KeyRing(tmp_path).signing_key("grant").kid
    pem = tmp_path / "grant" / f"{kid}.pem"
    pem.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyRingError, match="not a readable PEM private key"):
        KeyRing(tmp_path).signing_key("grant")


def test_current_pointing_to_a_missing_key_is_an_error(tmp_path: Path) -> None:
    KeyRing(tmp_path).signing_key("grant")
    (tmp_path / "grant" / "current").write_text("A" * 43 + "\n")
    with pytest.raises(KeyRingError, match="not in"):
        KeyRing(tmp_path).signing_key("grant")


def test_rotation_keeps_old_keys_for_verification(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path)
    other_process = KeyRing(tmp_path)
    old = ring.signing_key("grant")
    assert other_process.signing_key("grant").kid == old.kid
    signature = old.private_key.sign(b"approved")

    new = ring.rotate("grant")
    assert new.kid != old.kid and ring.signing_key("grant").kid == new.kid
    # The other instance sees the rotation on disk without a restart.
    assert other_process.signing_key("grant").kid == new.kid
    keys = other_process.public_key_map("grant")
    assert set(keys) == {old.kid, new.kid}
    keys[old.kid].verify(signature, b"approved")
    with pytest.raises(InvalidSignature):
        keys[new.kid].verify(signature, b"approved")

    statuses = {k["kid"]: k["status"] for k in ring.jwks()["keys"] if k["keyturn_purpose"] == "grant"}
    assert statuses == {old.kid: "verifying", new.kid: "current"}


def test_jwks_lists_every_purpose_as_okp_jwks(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path)
    jwks = ring.jwks()
    assert {k["keyturn_purpose"] for k in jwks["keys"]} == {"grant", "ledger"}
    for jwk in jwks["keys"]:
        assert {jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"], jwk["status"]} == {
            "OKP",
            "Ed25519",
            "EdDSA",
            "sig",
            "current",
        }
        assert "d" not in jwk  # never the private part
        assert jwk["kid"] == ring.signing_key(jwk["keyturn_purpose"]).kid


def test_invalid_purpose_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid key purpose"):
        KeyRing(tmp_path).signing_key("../escape")


def _start_in_process(data_dir: str, barrier: Any, out: Any) -> None:
    barrier.wait()  # every process creates its KeyRing at the same moment
    ring = KeyRing(Path(data_dir))
    out.put((ring.signing_key("grant").kid, ring.signing_key("ledger").kid))


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = 6
    barrier = context.Barrier(workers)
    out = context.Queue()
    processes = [
        context.Process(target=_start_in_process, args=(str(tmp_path), barrier, out)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    results = [out.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert len(set(results)) == 1
    grant_kid, _ = results[0]
    # The losers of the creation race removed their keys: one key file per purpose, no temporary files.
    assert {p.name for p in (tmp_path / "grant").iterdir()} == {"current", f"{grant_kid}.pem"}
    assert KeyRing(tmp_path).signing_key("grant").kid == grant_kid


def test_retire_stops_a_key_verifying_and_keeps_it_listed(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path)
    old = ring.signing_key("grant").kid
    new = ring.rotate("grant").kid
    with pytest.raises(KeyRingError, match="current grant key: rotate"):
        ring.retire(new)
    ring.retire(old)
    assert set(ring.public_key_map("grant")) == {new}
    assert {(k.kid, k.state) for k in ring.list_keys() if k.purpose == "grant"} == {
        (old, "retired"),
        (new, "current"),
    }
    assert set(KeyRing(tmp_path).public_key_map("grant")) == {new}  # another process agrees
    with pytest.raises(KeyRingError, match="no verifying key"):
        ring.retire(old)


def test_a_directory_ring_creates_nothing_until_a_key_is_needed(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "data")
    assert not (tmp_path / "data").exists()
    ring.signing_key("grant")
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
