"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs, and their verification.

Pure functions over SHA-256 and the standard library only, so an auditor's verifier needs nothing else.

- `CompactRange` (the "frontier"): the roots of the perfect subtrees that cover the first `size` leaves
  (one per set bit of `size`). Appending a leaf touches O(log n) hashes and the root is a fold of at most
  log2(n) nodes, so a verifier can stream a log of any length in constant memory.
- `MerkleTree`: every complete subtree root, level by level, in flat `bytearray`s (32 bytes a node). It
  grows incrementally as leaves arrive and answers roots, inclusion and consistency proofs for any earlier
  tree size in O(log² n) node lookups, without rehashing the log.
- `verify_inclusion` / `verify_consistency`: the verification algorithms of RFC 9162 §2.1.3.2 / §2.1.4.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 6962 §2.1: MTH({}) = SHA-256()

_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof that does not verify, or a request for a proof that cannot exist."""


def hash_leaf(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def _split_point(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2): where RFC 6962 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The frontier of a tree of `size` leaves: the roots of its perfect subtrees, largest first."""

    __slots__ = ("_nodes", "size")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(nodes) != size.bit_count():
            raise ValueError(f"a compact range of size {size} has {size.bit_count()} nodes, not {len(nodes)}")
        self.size = size
        self._nodes = list(nodes)

    @property
    def nodes(self) -> tuple[bytes, ...]:
        return tuple(self._nodes)

    def append(self, leaf_hash: bytes) -> None:
        nodes = self._nodes
        nodes.append(leaf_hash)
        self.size += 1
        # Each trailing zero bit of the new size is a pair of equal-sized subtrees that now merge.
        merges = (self.size & -self.size).bit_length() - 1
        for _ in range(merges):
            right = nodes.pop()
            nodes[-1] = _sha256(b"\x01" + nodes[-1] + right).digest()

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for leaf in leaf_hashes:
            self.append(leaf)

    def extend_packed(self, packed: bytes | memoryview) -> None:
        """Append the leaf hashes in `packed` (32 bytes each, concatenated): `append` in a tight loop."""
        if len(packed) % HASH_SIZE:
            raise ValueError(f"packed leaf hashes are a multiple of {HASH_SIZE} bytes, not {len(packed)}")
        data = bytes(packed)
        nodes = self._nodes
        pop, push, sha256 = nodes.pop, nodes.append, _sha256
        size = self.size
        for at in range(0, len(data), HASH_SIZE):
            node = data[at : at + HASH_SIZE]
            size += 1
            # Each trailing zero bit of the new size merges two equal-sized subtrees (see `append`).
            bits = size
            while not bits & 1:
                node = sha256(b"\x01" + pop() + node).digest()
                bits >>= 1
            push(node)
        self.size = size

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        root = self._nodes[-1]
        for node in reversed(self._nodes[:-1]):
            root = _sha256(b"\x01" + node + root).digest()
        return root


class MerkleTree:
    """All complete subtree roots of a growing log; proofs for any tree size up to `size`."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self.size = 0
        self.extend(leaf_hashes)

    def append(self, leaf_hash: bytes) -> None:
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf_hash)}")
        levels = self._levels
        levels[0] += leaf_hash
        self.size += 1
        index = self.size - 1
        level = 0
        # Complete every subtree this leaf closes: while the node just added is a right child.
        while index & 1:
            below = levels[level]
            start = (index - 1) * HASH_SIZE
            parent = _sha256(b"\x01" + below[start : start + 2 * HASH_SIZE]).digest()
            level += 1
            if len(levels) == level:
                levels.append(bytearray())
            levels[level] += parent
            index >>= 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for leaf in leaf_hashes:
            self.append(leaf)

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise ProofError(f"no leaf {index} in a tree of {self.size}")
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _perfect(self, level: int, index: int) -> bytes:
        start = index * HASH_SIZE
        return bytes(self._levels[level][start : start + HASH_SIZE])

    def subtree_root(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for the ranges RFC 6962's recursion visits."""
        n = hi - lo
        if n <= 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and lo % n == 0:
            level = n.bit_length() - 1
            return self._perfect(level, lo >> level)
        k = _split_point(n)
        return hash_children(self.subtree_root(lo, lo + k), self.subtree_root(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return self.subtree_root(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, leaf level first."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ProofError(f"leaf {index} is not in a tree of size {size}")
        proof: list[bytes] = []
        lo, hi, m = 0, size, index
        while hi - lo > 1:
            k = _split_point(hi - lo)
            if m < k:
                proof.append(self.subtree_root(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self.subtree_root(lo, lo + k))
                lo, m = lo + k, m - k
        proof.reverse()
        return proof

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """PROOF(size1, D[0:size2]) of RFC 9162 §2.1.4.1."""
        size2 = self.size if size2 is None else size2
        self._check_size(size2)
        if not 0 <= size1 <= size2:
            raise ProofError(f"no consistency proof from size {size1} to size {size2}")
        if size1 == 0 or size1 == size2:
            return []
        proof: list[bytes] = []
        lo, hi, m, whole = 0, size2, size1, True
        while m != hi - lo:
            k = _split_point(hi - lo)
            if m <= k:
                proof.append(self.subtree_root(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self.subtree_root(lo, lo + k))
                lo, m, whole = lo + k, m - k, False
        if not whole:
            proof.append(self.subtree_root(lo, hi))
        proof.reverse()
        return proof

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ProofError(f"tree size {size} is beyond the {self.size} leaves known")


def root_of(leaf_hashes: Iterable[bytes]) -> bytes:
    frontier = CompactRange()
    frontier.extend(leaf_hashes)
    return frontier.root()


def _check_hashes(*hashes: bytes) -> None:
    for value in hashes:
        if len(value) != HASH_SIZE:
            raise ProofError(f"a hash has {HASH_SIZE} bytes, not {len(value)}")


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise `ProofError` unless `proof` shows leaf `index` with `leaf_hash` in the tree (`size`, `root`)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hashes(leaf_hash, root, *proof)
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("the inclusion proof leads to another root hash")


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> None:
    """Raise `ProofError` unless tree (`size1`, `root1`) is a prefix of tree (`size2`, `root2`)."""
    if not 0 <= size1 <= size2:
        raise ProofError(f"size {size1} cannot be a prefix of size {size2}")
    _check_hashes(root1, root2, *proof)
    if size1 == size2:
        if proof:
            raise ProofError("trees of equal size need an empty consistency proof")
        if root1 != root2:
            raise ProofError("two trees of the same size have different root hashes")
        return
    if size1 == 0:
        if proof:
            raise ProofError("consistency with the empty tree needs an empty proof")
        if root1 != EMPTY_ROOT:
            raise ProofError("the root hash of an empty tree is SHA-256 of nothing")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # the old tree is a perfect subtree: its root is implied
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    if fr != root1:
        raise ProofError("the consistency proof does not lead to the old root hash")
    if sr != root2:
        raise ProofError("the consistency proof does not lead to the new root hash")
