"""The fast bundle verifier (block scanning, worker processes, packed tree updates) decides exactly as the
line-by-line reference: same verdict, same problem, same event named, for every kind of tampering."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from keyturn.ledger import bundle as bundle_module
from keyturn.ledger.bundle import export_store, read_bundle, verify_bundle
from keyturn.ledger.merkle import CompactRange, hash_leaf
from keyturn.ledger.verify import CheckpointSource, Problem, VerifyResult, verify_log
from keyturn.store import Store
from support.ledger import ORIGIN, build_ledger, make_signer

if TYPE_CHECKING:
    from conftest import RequestFactory

Lines = list[bytes]


def _reference(path: Path, external: list[CheckpointSource]) -> VerifyResult:
    """`verify_bundle` as it was: one `LeafEntry` per line from `Bundle.entries()`."""
    bundle = read_bundle(path)
    digest = hashlib.sha256()
    result = verify_log(
        bundle.entries(digest),
        [*bundle.checkpoint_sources(), *external],
        bundle.keys(),
        origin=bundle.origin,
        start=bundle.frontier(),
    )
    declared = bundle.manifest.get("events", {})
    if result.ok and (declared.get("count") != result.events or declared.get("sha256") != digest.hexdigest()):
        result.problem = Problem("manifest_mismatch", "manifest.json", location="manifest.json")
    return result


def _same(fast: VerifyResult, reference: VerifyResult) -> None:
    got, want = fast.as_dict(), reference.as_dict()
    if want["problem"] is not None and want["problem"]["code"] == "manifest_mismatch":
        want["problem"]["message"] = got["problem"]["message"] if got["problem"] else None
    assert got == want


def _recorded_hash_recomputed(lines: Lines) -> Lines:
    line = lines[7].replace(b"5000", b"5001", 1)
    leaf = line[line.index(b'"event":') + 8 : -2]
    lines[7] = b'{"leaf_hash":"' + hash_leaf(leaf).hex().encode() + b'","event":' + leaf + b"}\n"
    return lines


def _upper_hex(lines: Lines) -> Lines:
    lines[5] = lines[5][:14] + lines[5][14:78].upper() + lines[5][78:]
    return lines


def _reformatted(lines: Lines) -> Lines:
    lines[3] = json.dumps(json.loads(lines[3]), indent=1).replace("\n", "").encode() + b"\n"
    return lines


def _leading_zero_seq(lines: Lines) -> Lines:
    lines[4] = lines[4].replace(b',"seq":4,', b',"seq":04,', 1)
    return lines


TAMPERING: dict[str, Callable[[Lines], Lines]] = {
    "untouched": lambda lines: lines,
    "changed byte": lambda lines: [*lines[:7], lines[7].replace(b"5000", b"5001", 1), *lines[8:]],
    "changed with recomputed hash": _recorded_hash_recomputed,
    "deleted": lambda lines: lines[:12] + lines[13:],
    "swapped": lambda lines: [*lines[:20], lines[21], lines[20], *lines[22:]],
    "truncated": lambda lines: lines[:30],
    "duplicated last": lambda lines: [*lines, lines[-1]],
    "re-formatted line": _reformatted,
    "upper-case recorded hash": _upper_hex,
    "leading zero in seq": _leading_zero_seq,
    "CRLF endings": lambda lines: [line[:-1] + b"\r\n" for line in lines],
    "blank line": lambda lines: [*lines[:15], b"\n", *lines[15:]],
    "no final newline": lambda lines: [*lines[:-1], lines[-1][:-1]],
    "garbage line": lambda lines: [*lines[:25], b"not json\n", *lines[26:]],
}


@pytest.fixture
def exported(store: Store, factory: RequestFactory, tmp_path: Path) -> tuple[Path, list[CheckpointSource]]:
    build_ledger(store, factory, make_signer(), tmp_path / "witness")
    out = tmp_path / "bundle"
    export_store(store, out, origin=ORIGIN)
    latest = tmp_path / "witness" / "latest"
    return out, [CheckpointSource(latest.read_text(), str(latest), external=True)]


@pytest.mark.parametrize("block_bytes", [200, 1000, 1 << 22])
def test_fast_verification_names_what_the_reference_names(
    exported: tuple[Path, list[CheckpointSource]], block_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, external = exported
    monkeypatch.setattr(bundle_module, "BLOCK_BYTES", block_bytes)
    original = (path / "events.jsonl").read_bytes().splitlines(keepends=True)
    for name, tamper in TAMPERING.items():
        (path / "events.jsonl").write_bytes(b"".join(tamper(list(original))))
        for checkpoints in ([], external):
            reference = _reference(path, checkpoints)
            assert (name == "untouched") == reference.ok, (name, reference.summary())
            for workers in (0, 2) if block_bytes == 1000 else (0,):
                fast = verify_bundle(path, checkpoints, workers=workers)
                _same(fast, reference)


def test_random_corruption_is_judged_like_the_reference(
    exported: tuple[Path, list[CheckpointSource]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, external = exported
    monkeypatch.setattr(bundle_module, "BLOCK_BYTES", 700)
    original = (path / "events.jsonl").read_bytes()
    rng = random.Random(4)
    for _ in range(60):
        data = bytearray(original)
        for _ in range(rng.choice([1, 1, 2, 5])):
            data[rng.randrange(len(data))] = rng.choice(b'0123456789abcdef{}",:\n\r x\x00')
        (path / "events.jsonl").write_bytes(bytes(data))
        reference = _reference(path, external)
        _same(verify_bundle(path, external, workers=0), reference)
    (path / "events.jsonl").write_bytes(original)
    _same(verify_bundle(path, external, workers=2), _reference(path, external))


def test_fast_verification_of_a_slice(store: Store, factory: RequestFactory, tmp_path: Path) -> None:
    build_ledger(store, factory, make_signer())
    out = tmp_path / "slice"
    export_store(store, out, origin=ORIGIN, from_seq=10, to_seq=30)
    for workers in (0, 2):
        result = verify_bundle(out, workers=workers)
        assert result.ok and result.first_seq == 10, result.summary()
        _same(result, _reference(out, []))
    lines = (out / "events.jsonl").read_bytes().splitlines(keepends=True)
    (out / "events.jsonl").write_bytes(b"".join(lines[:4] + lines[5:]))
    result = verify_bundle(out, workers=2)
    assert result.problem is not None and result.problem.code == "seq_mismatch" and result.problem.seq == 14
    _same(result, _reference(out, []))


def test_workers_that_cannot_start_fall_back_to_this_process(
    exported: tuple[Path, list[CheckpointSource]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = exported
    monkeypatch.setattr(sys, "executable", str(path / "no-such-python"))
    assert verify_bundle(path, workers=2).ok


def test_a_worker_that_dies_is_replaced_by_this_process(
    exported: tuple[Path, list[CheckpointSource]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = exported
    monkeypatch.setattr(bundle_module, "BLOCK_BYTES", 500)
    monkeypatch.setattr(bundle_module, "_program", ["import os\nos._exit(3)\n"])
    result = verify_bundle(path, workers=2)
    assert result.ok, result.summary()


def test_packed_extend_equals_appending_one_by_one() -> None:
    leaves = [hash_leaf(str(i).encode()) for i in range(300)]
    for start in (0, 1, 5, 64, 127):
        one, packed = CompactRange(), CompactRange()
        one.extend(leaves[:start])
        packed.extend(leaves[:start])
        one.extend(leaves[start:])
        packed.extend_packed(b"".join(leaves[start:]))
        assert (one.size, one.nodes, one.root()) == (packed.size, packed.nodes, packed.root())
    with pytest.raises(ValueError):
        CompactRange().extend_packed(b"x" * 33)
