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

import binascii
import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyturn.ledger.merkle import CompactRange
from keyturn.ledger.note import NoteError, VerifierKey
from keyturn.ledger.verify import (
    CheckedRun,
    CheckpointSource,
    LeafEntry,
    Problem,
    VerifyResult,
    verify_log,
)

if TYPE_CHECKING:
    from keyturn.store import Store

FORMAT = "keyturn-ledger-bundle/1"
_PREFIX = b'{"leaf_hash":"'
_MIDDLE = b'","event":'
_LEAF_AT = len(_PREFIX) + 64 + len(_MIDDLE)
_HEX_AT = len(_PREFIX)
_MIDDLE_AT = _LEAF_AT - len(_MIDDLE)

# Fast verification reads events.jsonl in blocks of whole lines; from `PARALLEL_BYTES` on, the blocks are
# hashed by worker processes (one per CPU) while this one hashes the file and builds the tree.
BLOCK_BYTES = 4 << 20
PARALLEL_BYTES = 32 << 20


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
                yield _entry(raw.rstrip(b"\r\n"), f"events.jsonl:{number}")

    def checked_entries(
        self, digest: Any = None, workers: int | None = None
    ) -> Iterator[LeafEntry | CheckedRun]:
        """The events for `verify_log`, fast: runs of lines already checked (`CheckedRun`), and each line
        that fails a fast check (a changed, moved or re-formatted event) as the `LeafEntry` that
        `entries()` gives, so `verify_log` names problems exactly as it does with `entries()`.

        `workers`: processes hashing blocks in parallel (default: one per CPU for a large file; 0 or 1
        hashes in this process). `digest` sees every byte of the file, as with `entries()`.
        """
        path = self.path / "events.jsonl"
        if workers is None:
            workers = (os.cpu_count() or 1) if path.stat().st_size >= PARALLEL_BYTES else 0
        pool = _Workers.start(workers) if workers > 1 else None
        try:
            yield from self._checked(path, digest, pool, 2 * max(workers, 1) + 2)
        finally:
            if pool is not None:
                pool.close()

    def _checked(
        self, path: Path, digest: Any, pool: _Workers | None, depth: int
    ) -> Iterator[LeafEntry | CheckedRun]:
        queue: deque[tuple[bytes, int, int, Future[tuple[bytes, int, int]]]] = deque()

        def blocks() -> Iterator[tuple[bytes, int, int]]:
            """(whole lines, seq of the first, its line number): each block as read, hashed into `digest`."""
            seq, number, rest = self.first_seq, 1, b""
            with path.open("rb") as source:
                while True:
                    chunk = source.read(BLOCK_BYTES)
                    if digest is not None and chunk:
                        digest.update(chunk)
                    data = rest + chunk
                    cut = data.rfind(b"\n") + 1 if chunk else len(data)
                    block, rest = data[:cut], data[cut:]
                    if block:
                        yield block, seq, number
                        lines = block.count(b"\n") + (not block.endswith(b"\n"))
                        seq, number = seq + lines, number + lines
                    if not chunk:
                        return

        def settle(
            block: bytes, seq: int, number: int, done: tuple[bytes, int, int]
        ) -> Iterator[LeafEntry | CheckedRun]:
            hashes, checked, total = done
            if checked:
                yield CheckedRun(hashes)
            if checked < total:  # the rest of this block goes the careful way, line by line
                lines = _split(block)
                for offset in range(checked, total):
                    yield _entry(lines[offset].rstrip(b"\r"), f"events.jsonl:{number + offset}")

        for block, seq, number in blocks():
            if pool is None:
                yield from settle(block, seq, number, scan_block(block, seq))
                continue
            queue.append((block, seq, number, pool.submit(block, seq)))
            while len(queue) >= depth:
                block, seq, number, future = queue.popleft()
                yield from settle(block, seq, number, future.result())
        while queue:
            block, seq, number, future = queue.popleft()
            yield from settle(block, seq, number, future.result())

    def events(self) -> Iterator[dict[str, Any]]:
        for entry in self.entries():
            yield json.loads(entry.leaf)


def _split(block: bytes) -> list[bytes]:
    lines = block.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def scan_block(block: bytes, first_seq: int) -> tuple[bytes, int, int]:
    """(leaf hashes, lines checked, lines) of a block of events.jsonl whose first line has `first_seq`.

    Checks each line as `verify_log` would (seq, recomputed leaf hash = recorded one), in the exported
    format only, and stops at the first line that does not pass: the caller hands that line and the rest
    of the block to `verify_log` one by one, which then names the problem (or accepts, e.g., a re-formatted
    line). Passing here implies passing there, so nothing is accepted that the careful path would refuse.
    Runs in worker processes: stdlib only.
    """
    lines = _split(block)
    sha256, hexlify = hashlib.sha256, binascii.hexlify
    prefix, middle = _PREFIX, _MIDDLE
    hex_at, middle_at, leaf_at = _HEX_AT, _MIDDLE_AT, _LEAF_AT
    hashes = []
    seq = first_seq
    for line in lines:
        if not (line.startswith(prefix) and line.startswith(middle, middle_at) and line.endswith(b"}")):
            break
        leaf = line[leaf_at:-1]
        if b'"passkey":' in leaf:
            break  # a passkey-signed review: `verify_log` checks its signature on the careful path
        leaf_hash = sha256(b"\x00" + leaf).digest()
        if hexlify(leaf_hash) != line[hex_at:middle_at]:
            break
        at = leaf.rfind(b',"seq":')
        if at < 0 or not leaf.startswith(b"%d," % seq, at + 7):
            break
        hashes.append(leaf_hash)
        seq += 1
    return b"".join(hashes), seq - first_seq, len(lines)


class _Workers:
    """Processes running `scan_block` on blocks piped to them, each driven by a thread of this process.

    Each is a fresh interpreter (`python -I -S -c <scan_block's source>`): no fork of a process that may hold
    locks, no re-import of the caller's main module, nothing but the standard library loaded. A worker that
    fails is replaced by scanning its block here, so the result never depends on the workers.
    """

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self._processes = processes
        self._idle: list[subprocess.Popen[bytes] | None] = list(processes)
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(len(processes), thread_name_prefix="keyturn-verify")

    @classmethod
    def start(cls, count: int) -> _Workers | None:
        program = _worker_program()
        if program is None or not sys.executable:
            return None
        try:
            processes = [
                subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", program],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                for _ in range(count)
            ]
        except OSError:  # no interpreter to start
            return None
        _widen_pipes(processes)
        return cls(processes)

    def submit(self, block: bytes, seq: int) -> Future[tuple[bytes, int, int]]:
        return self._threads.submit(self._run, block, seq)

    def _run(self, block: bytes, seq: int) -> tuple[bytes, int, int]:
        with self._lock:
            process = self._idle.pop()  # as many threads as processes: never empty
        if process is None:  # its process failed earlier: this thread scans here
            with self._lock:
                self._idle.append(None)
            return scan_block(block, seq)
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(struct.pack("<QQ", seq, len(block)))
            process.stdin.write(block)
            process.stdin.flush()
            checked, total = struct.unpack("<QQ", process.stdout.read(16))
            hashes = process.stdout.read(checked * 32)
            if len(hashes) != checked * 32:
                raise OSError("short answer from a verify worker")
        except (OSError, ValueError, struct.error):
            process.kill()
            with self._lock:
                self._idle.append(None)
            return scan_block(block, seq)
        with self._lock:
            self._idle.append(process)
        return hashes, checked, total

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        for process in self._processes:
            try:
                if process.stdin is not None:
                    process.stdin.close()
                process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


_program: list[str | None] = []


def _worker_program() -> str | None:
    """The worker: `scan_block` and what it needs, from this module's source (None for a frozen install).

    Taken when this module is imported (`inspect` is loaded by then anyway) and kept, so a worker runs the
    code this process loaded even if the file changes on disk later.
    """
    if not _program:
        try:
            import inspect

            _program.append(
                "\n".join(
                    [
                        "import binascii, hashlib, struct, sys",
                        *(f"{name} = {globals()[name]!r}" for name in _SCAN_CONSTANTS),
                        inspect.getsource(_split),
                        inspect.getsource(scan_block),
                        _SERVE,
                    ]
                )
            )
        except (OSError, TypeError):
            _program.append(None)
    return _program[0]


def _widen_pipes(processes: list[subprocess.Popen[bytes]]) -> None:
    """1 MiB pipes where the OS allows it (Linux): a block crosses in a few transfers, not dozens."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:  # pragma: no cover - not Linux
        return
    for process in processes:
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep the default
                    fcntl.fcntl(pipe.fileno(), set_size, 1 << 20)


_SCAN_CONSTANTS = ("_PREFIX", "_MIDDLE", "_HEX_AT", "_MIDDLE_AT", "_LEAF_AT")
_SERVE = """
source, sink = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = source.read(16)
    if len(head) < 16:
        break
    seq, size = struct.unpack("<QQ", head)
    hashes, checked, total = scan_block(source.read(size), seq)
    sink.write(struct.pack("<QQ", checked, total) + hashes)
    sink.flush()
"""


def _entry(line: bytes, location: str) -> LeafEntry:
    """One line as `Bundle.entries()` reads it."""
    if line.startswith(_PREFIX) and line[_MIDDLE_AT:_LEAF_AT] == _MIDDLE and line.endswith(b"}"):
        try:
            recorded: bytes | None = bytes.fromhex(line[_HEX_AT:_MIDDLE_AT].decode())
        except ValueError:
            recorded = None
        return LeafEntry(line[_LEAF_AT:-1], recorded, location)
    return _reformatted(line, location)


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
    path: Path,
    external: Sequence[CheckpointSource] = (),
    trusted: Sequence[VerifierKey] = (),
    *,
    workers: int | None = None,
) -> VerifyResult:
    """Verify a bundle offline. `trusted` pins the keys; without it the bundle's own keys.json is used.

    `workers`: see `Bundle.checked_entries` (default: parallel for large bundles).
    """
    bundle = read_bundle(path)
    try:
        keys = list(trusted) or bundle.keys()
    except NoteError as exc:
        return VerifyResult(
            origin=bundle.origin, problem=Problem("bad_key", f"keys.json: {exc}", location="keys.json")
        )
    digest = hashlib.sha256()
    result = verify_log(
        bundle.checked_entries(digest, workers),
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


_worker_program()
