"""Export bundles: a self-contained, verifiable copy of the ledger (or a slice of it).

Layout of a bundle directory::

    manifest.json        format, origin, counts, first/last seq, SHA-256 of every other file, and for a
                         slice that does not start at seq 0 the Merkle frontier before its first event
    events.jsonl         one event a line: {"leaf_hash":"<hex>","event":<leaf>} where <leaf> is verbatim the
                         RFC 8785 canonical JSON the Merkle leaf commits to, and leaf_hash the hash the server
                         recorded when it appended the event
    checkpoints/<size>.note   the signed checkpoints (C2SP signed notes), one file each
    keys.json            every ledger verifier key ("name+hash+base64"), current and retired

Writing the leaf verbatim means a verifier hashes bytes instead of re-canonicalising JSON, and any JSON tool
can still read the file (`.event` is an ordinary object). Reading needs only the standard library (plus
`rfc8785` for a file someone re-formatted); this module never imports the store or the server.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyturn.ledger.merkle import CompactRange
from keyturn.ledger.note import NoteError, VerifierKey
from keyturn.ledger.verify import CheckpointSource, LeafEntry, Problem, VerifyResult, verify_log

if TYPE_CHECKING:
    from keyturn.store import Store

FORMAT = "keyturn-ledger-bundle/1"
_PREFIX = b'{"leaf_hash":"'
_MIDDLE = b'","event":'
_LEAF_AT = len(_PREFIX) + 64 + len(_MIDDLE)


class BundleError(Exception):
    """A bundle that cannot be read at all (missing manifest, unknown format)."""


def event_line(leaf: bytes, leaf_hash_hex: str) -> bytes:
    return _PREFIX + leaf_hash_hex.encode() + _MIDDLE + leaf + b"}\n"


@dataclass(frozen=True)
class KeyEntry:
    name: str
    verifier_key: str
    created_at: str | None = None
    retired_at: str | None = None


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    key_entries: list[KeyEntry] = field(default_factory=list)

    @property
    def origin(self) -> str | None:
        origin = self.manifest.get("origin")
        return origin if isinstance(origin, str) else None

    @property
    def first_seq(self) -> int:
        return int(self.manifest.get("events", {}).get("first_seq", 0))

    def frontier(self) -> CompactRange:
        nodes = [bytes.fromhex(h) for h in self.manifest.get("frontier", [])]
        return CompactRange(self.first_seq, nodes)

    def keys(self) -> list[VerifierKey]:
        return [VerifierKey.parse(k.verifier_key) for k in self.key_entries]

    def checkpoint_sources(self) -> list[CheckpointSource]:
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        files = sorted(folder.glob("*.note"), key=lambda p: (len(p.name), p.name))
        return [CheckpointSource(p.read_text(encoding="utf-8"), f"checkpoints/{p.name}") for p in files]

    def entries(self, digest: Any = None) -> Iterator[LeafEntry]:
        """The events, as the verifier reads them; `digest` (a hashlib object) sees every raw line."""
        with (self.path / "events.jsonl").open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if digest is not None:
                    digest.update(raw)
                line = raw.rstrip(b"\r\n")
                location = f"events.jsonl:{number}"
                if (
                    line.startswith(_PREFIX)
                    and line[_LEAF_AT - len(_MIDDLE) : _LEAF_AT] == _MIDDLE
                    and line.endswith(b"}")
                ):
                    try:
                        recorded = bytes.fromhex(line[len(_PREFIX) : _LEAF_AT - len(_MIDDLE)].decode())
                    except ValueError:
                        recorded = None
                    yield LeafEntry(line[_LEAF_AT:-1], recorded, location)
                else:
                    yield _reformatted(line, location)

    def events(self) -> Iterator[dict[str, Any]]:
        for entry in self.entries():
            yield json.loads(entry.leaf)


def _reformatted(line: bytes, location: str) -> LeafEntry:
    """A line someone pretty-printed or re-ordered: canonicalise the event again (slow path)."""
    import rfc8785

    try:
        value = json.loads(line)
        event = value["event"]
        recorded = bytes.fromhex(value["leaf_hash"]) if isinstance(value.get("leaf_hash"), str) else None
        return LeafEntry(bytes(rfc8785.dumps(event)), recorded, location)
    except (ValueError, KeyError, TypeError, rfc8785.CanonicalizationError):
        return LeafEntry(line, None, location)  # the verifier reports it as "not an event"


def read_bundle(path: Path) -> Bundle:
    manifest_file = path / "manifest.json"
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{manifest_file}: no such file (is {path} a ledger bundle?)") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_file}:{exc.lineno}:{exc.colno}: {exc.msg}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_file}: not a {FORMAT} manifest")
    keys_file = path / "keys.json"
    try:
        raw_keys = json.loads(keys_file.read_text(encoding="utf-8")) if keys_file.exists() else []
        entries = [KeyEntry(**k) for k in raw_keys]
    except json.JSONDecodeError as exc:
        raise BundleError(f"{keys_file}:{exc.lineno}:{exc.colno}: {exc.msg}") from exc
    except TypeError as exc:
        raise BundleError(f"{keys_file}: each key is an object with name and verifier_key ({exc})") from exc
    return Bundle(path, manifest, entries)


def verify_bundle(
    path: Path, external: Sequence[CheckpointSource] = (), trusted: Sequence[VerifierKey] = ()
) -> VerifyResult:
    """Verify a bundle offline. `trusted` pins the keys; without it the bundle's own keys.json is used."""
    bundle = read_bundle(path)
    try:
        keys = list(trusted) or bundle.keys()
    except NoteError as exc:
        return VerifyResult(
            origin=bundle.origin, problem=Problem("bad_key", f"keys.json: {exc}", location="keys.json")
        )
    digest = hashlib.sha256()
    result = verify_log(
        bundle.entries(digest),
        [*bundle.checkpoint_sources(), *external],
        keys,
        origin=bundle.origin,
        pinned_keys=bool(trusted),
        start=bundle.frontier(),
    )
    if result.ok:
        declared = bundle.manifest.get("events", {})
        if declared.get("count") != result.events or declared.get("sha256") != digest.hexdigest():
            result.problem = Problem(
                "manifest_mismatch",
                "manifest.json: events.jsonl has changed since export (count or SHA-256 differ), "
                "although every "
                "event and checkpoint in it verifies",
                location="manifest.json",
            )
    return result


# --- export -------------------------------------------------------------------------------------------


def export_store(
    store: Store, out: Path, *, origin: str, from_seq: int = 0, to_seq: int | None = None, page: int = 5000
) -> dict[str, Any]:
    """Write the events `from_seq`..`to_seq` (inclusive) of a store, with their checkpoints and keys."""
    head = store.head_seq()
    last = head if to_seq is None else min(to_seq, head)
    if from_seq < 0 or (last >= 0 and from_seq > last + 1):
        raise ValueError(f"--from {from_seq} is outside the ledger (seq 0 to {head})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    frontier = CompactRange()
    after = -1
    while frontier.size < from_seq:
        hashes = store.leaf_hashes(after_seq=after, limit=min(page * 10, from_seq - frontier.size))
        frontier.extend(hashes)
        after += len(hashes)
    digest = hashlib.sha256()
    count = 0
    with (out / "events.jsonl").open("wb") as sink:
        after = from_seq - 1
        while after < last:
            batch = store.events(after_seq=after, limit=min(page, last - after))
            if not batch:
                break
            for event in batch:
                line = event_line(event.leaf_bytes(), event.leaf_hash)
                digest.update(line)
                sink.write(line)
                count += 1
            after = batch[-1].seq
    files: list[dict[str, Any]] = []
    for cp in store.checkpoints():
        if from_seq < cp.size <= last + 1:
            name = f"checkpoints/{cp.size}.note"
            _write(out / name, cp.note.encode())
            files.append(
                {"file": name, "size": cp.size, "key": cp.key_name, "sha256": _sha(cp.note.encode())}
            )
    keys = [
        {
            "name": k.name,
            "verifier_key": k.public_key,
            "created_at": k.created_at.isoformat(),
            "retired_at": k.retired_at.isoformat() if k.retired_at else None,
        }
        for k in store.ledger_keys()
    ]
    keys_bytes = json.dumps(keys, indent=2).encode() + b"\n"
    _write(out / "keys.json", keys_bytes)
    manifest = {
        "format": FORMAT,
        "origin": origin,
        "exported_at": datetime.now(UTC).isoformat(),
        "events": {
            "file": "events.jsonl",
            "count": count,
            "first_seq": from_seq,
            "last_seq": from_seq + count - 1,
            "sha256": digest.hexdigest(),
        },
        "frontier": [node.hex() for node in frontier.nodes],
        "checkpoints": files,
        "keys": {"file": "keys.json", "count": len(keys), "sha256": _sha(keys_bytes)},
    }
    _write(out / "manifest.json", json.dumps(manifest, indent=2).encode() + b"\n")
    return manifest


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
