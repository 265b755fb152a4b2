"""Known answers for the Merkle tree (RFC 6962 and the transparency-dev / Certificate Transparency test
vectors) and the C2SP signed-note format (the Go `x/mod/sumdb/note` example), cross-checked against a naive
recursive implementation written straight from RFC 9162 §2.1."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keyturn.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    ProofError,
    hash_children,
    hash_leaf,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from keyturn.ledger.note import (
    Checkpoint,
    Note,
    NoteError,
    NoteSigner,
    SignatureError,
    SignedCheckpoint,
    VerifierKey,
    sign_checkpoint,
)

# transparency-dev/merkle testonly.LeafInputs() and RootHashes()
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
# proof/verify_test.go: (leaf index, tree size, proof) and (size1, size2, proof)
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


# --- a naive reference, straight from RFC 9162 §2.1 ------------------------------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256().digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:])).digest()


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [naive_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


# --- known answers -----------------------------------------------------------------------------------------


def test_empty_tree_hash_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert MerkleTree().root() == CompactRange().root() == root_of([]) == EMPTY_ROOT


def test_leaf_and_node_hashes_match_transparency_dev() -> None:
    # rfc6962_test.go: HashLeaf("L123456"), HashChildren("N123", "N456")
    assert hash_leaf(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert (
        hash_children(b"N123", b"N456").hex()
        == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


def test_roots_of_every_prefix_match_the_published_vectors() -> None:
    tree = MerkleTree()
    frontier = CompactRange()
    for size, expected in enumerate(ROOTS):
        assert tree.root() == frontier.root() == expected, size
        assert naive_mth(LEAVES[:size]) == expected
        if size < len(LEAVES):
            tree.append(hash_leaf(LEAVES[size]))
            frontier.append(hash_leaf(LEAVES[size]))
    for size, expected in enumerate(ROOTS):  # older sizes stay answerable as the tree grows
        assert tree.root(size) == expected


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_published_vectors(index: int, size: int, proof: list[str]) -> None:
    tree = MerkleTree(hash_leaf(leaf) for leaf in LEAVES)
    assert [h.hex() for h in tree.inclusion_proof(index, size)] == proof
    verify_inclusion(index, size, hash_leaf(LEAVES[index]), [bytes.fromhex(h) for h in proof], ROOTS[size])


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_published_vectors(size1: int, size2: int, proof: list[str]) -> None:
    tree = MerkleTree(hash_leaf(leaf) for leaf in LEAVES)
    assert [h.hex() for h in tree.consistency_proof(size1, size2)] == proof
    verify_consistency(size1, size2, ROOTS[size1], ROOTS[size2], [bytes.fromhex(h) for h in proof])


def test_every_proof_up_to_40_leaves_agrees_with_the_naive_reference_and_verifies() -> None:
    data = [bytes([i]) * (i % 5) for i in range(40)]
    tree = MerkleTree(hash_leaf(d) for d in data)
    for n in range(1, 41):
        root = naive_mth(data[:n])
        assert tree.root(n) == root
        for m in range(n):
            proof = tree.inclusion_proof(m, n)
            assert proof == naive_path(m, data[:n])
            verify_inclusion(m, n, hash_leaf(data[m]), proof, root)
        for m in range(1, n + 1):
            proof = tree.consistency_proof(m, n)
            assert proof == naive_subproof(m, data[:n], True)
            verify_consistency(m, n, naive_mth(data[:m]), root, proof)


def test_corrupted_inclusion_proofs_are_rejected() -> None:
    tree = MerkleTree(hash_leaf(leaf) for leaf in LEAVES)
    proof = tree.inclusion_proof(5, 8)
    leaf = hash_leaf(LEAVES[5])
    some = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    bad_cases = [
        (4, 8, leaf, proof, ROOTS[8]),
        (6, 8, leaf, proof, ROOTS[8]),
        (5, 16, leaf, proof, ROOTS[8]),
        (5, 4, leaf, proof, ROOTS[8]),
        (5, 8, hash_leaf(b"WrongLeaf"), proof, ROOTS[8]),
        (5, 8, leaf, proof, EMPTY_ROOT),
        (5, 8, leaf, proof, some),
        (5, 8, leaf, [*proof, ROOTS[8]], ROOTS[8]),
        (5, 8, leaf, [ROOTS[8], *proof], ROOTS[8]),
        (5, 8, leaf, proof[:-1], ROOTS[8]),
        (5, 8, leaf, [proof[0], some, *proof[1:]], ROOTS[8]),
        (5, 8, leaf, [bytes([proof[0][0] ^ 8]) + proof[0][1:], *proof[1:]], ROOTS[8]),
        (5, 8, leaf, [b"", *proof], ROOTS[8]),
    ]
    for index, size, leaf_hash, path, root in bad_cases:
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf_hash, path, root)


def test_corrupted_consistency_proofs_are_rejected() -> None:
    tree = MerkleTree(hash_leaf(leaf) for leaf in LEAVES)
    proof = tree.consistency_proof(6, 8)
    r6, r8 = ROOTS[6], ROOTS[8]
    bad_cases = [
        (5, 8, r6, r8, proof),
        (7, 8, r6, r8, proof),
        (6, 16, r6, r8, proof),
        (6, 4, r6, r8, proof),
        (6, 8, r8, r6, proof),
        (6, 8, r6, r8, []),
        (6, 8, r6, r8, [*proof, r6]),
        (6, 8, r6, r8, [r8, *proof]),
        (6, 8, r6, r8, proof[:-1]),
        (6, 8, r6, r8, [bytes([proof[1][0] ^ 16]) + proof[1][1:], proof[0], proof[2]]),
        (1, 1, ROOTS[1], ROOTS[2], []),
        (0, 1, EMPTY_ROOT, ROOTS[1], [EMPTY_ROOT]),
        (2, 1, ROOTS[2], ROOTS[1], []),
    ]
    for size1, size2, root1, root2, path in bad_cases:
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, root1, root2, path)


def test_compact_range_holds_one_node_per_set_bit_and_rejects_bad_state() -> None:
    frontier = CompactRange()
    for i in range(100):
        frontier.append(hash_leaf(bytes([i])))
        assert len(frontier.nodes) == frontier.size.bit_count()
    assert CompactRange(frontier.size, frontier.nodes).root() == frontier.root()
    with pytest.raises(ValueError):
        CompactRange(3, [EMPTY_ROOT])


# --- signed notes and checkpoints ------------------------------------------------------------------------

GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY_SEED = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_SIGNED = GO_TEXT + (
    "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6R"
    "yyBwJnAM=\n"
)


def test_signed_note_matches_the_go_reference_vector() -> None:
    key = VerifierKey.parse(GO_VKEY)
    assert str(key) == GO_VKEY and key.hash.hex() == "c74f20a3"
    assert Note.parse(GO_SIGNED).verify([key]) == key
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(GO_SKEY_SEED)[1:])
    assert NoteSigner("PeterNeumann", private).sign(GO_TEXT) == GO_SIGNED  # Ed25519 is deterministic


def test_note_signature_failures_are_named() -> None:
    key = VerifierKey.parse(GO_VKEY)
    altered = GO_SIGNED.replace("cryptography", "cryptographY")
    with pytest.raises(SignatureError) as bad:
        Note.parse(altered).verify([key])
    assert bad.value.code == "bad_signature"
    other = NoteSigner("PeterNeumann", Ed25519PrivateKey.generate()).verifier
    with pytest.raises(SignatureError) as unknown:
        Note.parse(GO_SIGNED).verify([other])
    assert unknown.value.code == "unknown_key" and "PeterNeumann+c74f20a3" in str(unknown.value)
    for broken in ("no blank line\n", GO_TEXT + "\nnot a signature\n", GO_TEXT + "\n— name !!!\n"):
        with pytest.raises(NoteError):
            Note.parse(broken)
    for bad_key in (
        "a+b",
        "name+00000000+AQ==",
        "name+zz+" + GO_VKEY.split("+", 2)[2],
        "bad name+c74f20a3+x",
    ):
        with pytest.raises(NoteError):
            VerifierKey.parse(bad_key)
    with pytest.raises(NoteError):  # the hash must match the name: a key cannot be renamed
        VerifierKey.parse("PeterNeumann2+c74f20a3+" + GO_VKEY.split("+", 2)[2])


def test_checkpoint_round_trip_with_time_extension() -> None:
    signer = NoteSigner("example.com/log/k1", Ed25519PrivateKey.generate())
    at = datetime(2030, 1, 7, 9, 0, 1, 5, tzinfo=UTC)
    note = sign_checkpoint(signer, Checkpoint("example.com/log", 8, ROOTS[8], at))
    assert note.startswith(
        f"example.com/log\n8\n{base64.b64encode(ROOTS[8]).decode()}\ntime 2030-01-07T09:00:01.000005Z\n\n— "
    )
    parsed = SignedCheckpoint.parse(note)
    assert (parsed.checkpoint.origin, parsed.size, parsed.root, parsed.checkpoint.time) == (
        "example.com/log",
        8,
        ROOTS[8],
        at,
    )
    assert parsed.verify([signer.verifier]) == signer.verifier
    # A checkpoint from another C2SP log, with no extension lines and an unknown one, parses too.
    plain = Checkpoint.from_text(
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\nx y\n"
    )
    assert plain.size == 20852163 and plain.time is None and plain.extensions == ("x y",)
    for bad in ("o\n01\n" + base64.b64encode(ROOTS[1]).decode() + "\n", "o\n1\nAAAA\n", "o\n1\n"):
        with pytest.raises(NoteError):
            Checkpoint.from_text(bad)
