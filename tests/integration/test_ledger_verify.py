"""Verification of a live database and of exported bundles, and the tampering it must detect and name.

Every tamper test changes the stored ledger the way an attacker with database or file access would, and
checks that verification fails with the right code and points at the right event or checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from keyturn.ledger.bundle import export_store, verify_bundle
from keyturn.ledger.checkpointer import Checkpointer
from keyturn.ledger.live import verify_store
from keyturn.ledger.merkle import MerkleTree
from keyturn.ledger.note import NoteSigner, SignedCheckpoint, sign_checkpoint
from keyturn.ledger.verify import CheckpointSource, VerifyResult
from keyturn.store import Store
from keyturn.store.records import leaf_bytes, leaf_hash
from support.ledger import ORIGIN, build_ledger, make_signer

if TYPE_CHECKING:
    from conftest import RequestFactory


def _sql(store: Store, statement: str, **params: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement), params)


def _external(path: Path) -> list[CheckpointSource]:
    return [CheckpointSource(path.read_text(), str(path), external=True)]


def _fails(result: VerifyResult, code: str) -> str:
    assert not result.ok, result.summary()
    assert result.problem is not None and result.problem.code == code, result.summary()
    return result.problem.message


def test_an_untouched_ledger_verifies(store: Store, factory: RequestFactory, tmp_path: Path) -> None:
    signer = make_signer()
    checkpointer = build_ledger(store, factory, signer, tmp_path / "witness")
    result = verify_store(store, _external(tmp_path / "witness" / "latest"), [])
    assert result.ok, result.summary()
    assert result.events == store.head_seq() + 1 == 46 and result.covered == 46
    assert result.checkpoints == len(store.checkpoints()) >= 5 and result.external == 1
    assert result.keys_used == [signer.verifier.id]
    assert result.root == MerkleTree(store.leaf_hashes()).root().hex()
    assert checkpointer.checkpoint(force=True) is None  # nothing new to sign
    # The witness directory has one file per checkpoint and `latest`.
    names = {p.name for p in (tmp_path / "witness").iterdir()}
    assert names == {"latest"} | {f"checkpoint.{c.size}" for c in store.checkpoints()}
    assert result.summary().startswith("OK: 46 events")


def test_changed_payload_byte_is_named(store: Store, factory: RequestFactory) -> None:
    build_ledger(store, factory, make_signer())
    _sql(store, "UPDATE events SET payload = replace(payload, '5000', '5001') WHERE seq = 7")
    message = _fails(verify_store(store, [], []), "leaf_hash_mismatch")
    assert "event seq 7" in message


def test_changed_payload_with_recomputed_leaf_hash_is_caught_by_the_checkpoint(
    store: Store, factory: RequestFactory
) -> None:
    build_ledger(store, factory, make_signer())
    event = store.events(after_seq=6, limit=1)[0]
    payload = {**event.payload, "justification": "nothing to see"}
    forged = leaf_hash(
        leaf_bytes(event.seq, event.ts, event.type, event.actor, event.request_id, payload)
    ).hex()
    _sql(
        store,
        "UPDATE events SET payload = :p, leaf_hash = :h WHERE seq = 7",
        p=json.dumps(payload, sort_keys=True, separators=(",", ":")),
        h=forged,
    )
    result = verify_store(store, [], [])
    message = _fails(result, "root_mismatch")
    covering = min(c.size for c in store.checkpoints() if c.size > 7)
    assert result.problem is not None and result.problem.size == covering
    assert f"do not produce the signed root of checkpoint {covering}" in message


def test_deleted_event_is_named(store: Store, factory: RequestFactory) -> None:
    build_ledger(store, factory, make_signer())
    _sql(store, "DELETE FROM events WHERE seq = 9")
    result = verify_store(store, [], [])
    _fails(result, "seq_mismatch")
    assert result.problem is not None and result.problem.seq == 9


def test_two_swapped_events_are_named(store: Store, factory: RequestFactory) -> None:
    build_ledger(store, factory, make_signer())
    _sql(store, "UPDATE events SET seq = -1 WHERE seq = 10")
    _sql(store, "UPDATE events SET seq = 10 WHERE seq = 11")
    _sql(store, "UPDATE events SET seq = 11 WHERE seq = -1")
    result = verify_store(store, [], [])
    _fails(result, "leaf_hash_mismatch")
    assert result.problem is not None and result.problem.seq == 10


def test_truncated_tail_shows_against_a_checkpoint_held_elsewhere(
    store: Store, factory: RequestFactory, tmp_path: Path
) -> None:
    build_ledger(store, factory, make_signer(), tmp_path / "witness")
    keep = store.checkpoints()[1].size
    _sql(store, "DELETE FROM events WHERE seq >= :n", n=keep)
    _sql(store, "UPDATE ledger_head SET next_seq = :n", n=keep)
    _sql(store, "DELETE FROM checkpoints WHERE size > :n", n=keep)
    assert verify_store(store, [], []).ok  # on its own, a cleanly cut log looks fine…
    result = verify_store(store, _external(tmp_path / "witness" / "latest"), [])
    message = _fails(result, "truncated")  # …until a checkpoint kept elsewhere is shown to it
    assert "covers 46 events but the log has only" in message


def test_forged_checkpoint_signature_is_named(store: Store, factory: RequestFactory) -> None:
    build_ledger(store, factory, make_signer())
    victim = store.checkpoints()[2]
    parsed = SignedCheckpoint.parse(victim.note)
    lines = victim.note.split("\n")
    lines[1] = str(parsed.size + 1)  # claim another size, keep the old signature
    _sql(store, "UPDATE checkpoints SET note = :n WHERE size = :s", n="\n".join(lines), s=victim.size)
    result = verify_store(store, [], [])
    message = _fails(result, "bad_signature")
    assert "does not verify" in message


def test_checkpoint_signed_by_an_unknown_key_is_named(store: Store, factory: RequestFactory) -> None:
    signer = make_signer()
    build_ledger(store, factory, signer)
    victim = store.checkpoints()[0]
    impostor = NoteSigner(signer.name, Ed25519PrivateKey.generate())  # same name, other key
    parsed = SignedCheckpoint.parse(victim.note)
    _sql(
        store,
        "UPDATE checkpoints SET note = :n WHERE size = :s",
        n=sign_checkpoint(impostor, parsed.checkpoint),
        s=victim.size,
    )
    result = verify_store(store, [], [])
    message = _fails(result, "unknown_key")
    assert (
        result.problem is not None and result.problem.size == victim.size and impostor.verifier.id in message
    )
    # A pinned key refuses a log whose checkpoints were all signed by someone else.
    pinned = verify_store(store, [], [make_signer().verifier])
    _fails(pinned, "unknown_key")


def test_log_rewritten_and_resigned_with_the_stolen_key_is_inconsistent_with_a_witness(
    store: Store, factory: RequestFactory, tmp_path: Path
) -> None:
    private = Ed25519PrivateKey.generate()
    signer = make_signer(private=private)
    build_ledger(store, factory, signer, tmp_path / "witness")
    witnessed = tmp_path / "held-by-auditor.note"
    witnessed.write_text((tmp_path / "witness" / "latest").read_text())
    # The attacker rewrites event 3, fixes its leaf hash, drops every checkpoint and re-signs the history.
    event = store.events(after_seq=2, limit=1)[0]
    payload = {**event.payload, "comment": "approved, obviously"}
    forged = leaf_hash(
        leaf_bytes(event.seq, event.ts, event.type, event.actor, event.request_id, payload)
    ).hex()
    _sql(
        store,
        "UPDATE events SET payload = :p, leaf_hash = :h WHERE seq = 3",
        p=json.dumps(payload, sort_keys=True, separators=(",", ":")),
        h=forged,
    )
    _sql(store, "DELETE FROM checkpoints")
    thief = Checkpointer(store, make_signer(private=private), ORIGIN, every=1, clock=lambda: factory.now)
    thief.start()
    assert thief.checkpoint(force=True) is not None
    assert verify_store(store, [], []).ok  # internally consistent and validly signed…
    result = verify_store(store, _external(witnessed), [signer.verifier])
    message = _fails(result, "inconsistent")  # …but not the history the witness saw
    assert "rewritten" in message and result.problem is not None and result.problem.size == 46


def test_checkpointer_refuses_to_sign_over_a_tampered_database(store: Store, factory: RequestFactory) -> None:
    signer = make_signer()
    build_ledger(store, factory, signer)
    _sql(store, "UPDATE events SET leaf_hash = :h WHERE seq = 1", h="00" * 32)
    restarted = Checkpointer(store, signer, ORIGIN, every=1, clock=lambda: factory.now)
    restarted.start()
    assert restarted.halted is not None and "tampering" in restarted.halted
    assert restarted.checkpoint(force=True) is None


# --- bundles -------------------------------------------------------------------------------------------


@pytest.fixture
def bundle(store: Store, factory: RequestFactory, tmp_path: Path) -> Path:
    build_ledger(store, factory, make_signer(), tmp_path / "witness")
    out = tmp_path / "bundle"
    export_store(store, out, origin=ORIGIN)
    return out


def _lines(path: Path) -> list[bytes]:
    return (path / "events.jsonl").read_bytes().splitlines(keepends=True)


def test_bundle_verifies_and_names_tampering(bundle: Path, tmp_path: Path) -> None:
    assert verify_bundle(bundle).ok
    assert verify_bundle(bundle, _external(tmp_path / "witness" / "latest")).ok
    original = _lines(bundle)
    assert json.loads(original[0])["event"]["seq"] == 0  # any JSON tool can read it

    changed = list(original)
    changed[7] = changed[7].replace(b"5000", b"5001", 1)
    (bundle / "events.jsonl").write_bytes(b"".join(changed))
    result = verify_bundle(bundle)
    assert _fails(result, "leaf_hash_mismatch").startswith("event seq 7 (events.jsonl:8)")

    (bundle / "events.jsonl").write_bytes(b"".join(original[:12] + original[13:]))
    result = verify_bundle(bundle)
    _fails(result, "seq_mismatch")
    assert result.problem is not None and result.problem.location == "events.jsonl:13"

    swapped = list(original)
    swapped[20], swapped[21] = swapped[21], swapped[20]
    (bundle / "events.jsonl").write_bytes(b"".join(swapped))
    result = verify_bundle(bundle)
    _fails(result, "seq_mismatch")
    assert result.problem is not None and result.problem.seq == 20

    (bundle / "events.jsonl").write_bytes(b"".join(original[:30]))
    _fails(verify_bundle(bundle), "truncated")

    (bundle / "events.jsonl").write_bytes(b"".join(original) + original[-1])
    _fails(verify_bundle(bundle), "seq_mismatch")

    (bundle / "events.jsonl").write_bytes(b"".join(original))
    pretty = json.loads(original[3])  # a re-formatted line still verifies (slow path)
    (bundle / "events.jsonl").write_bytes(
        b"".join(
            [*original[:3], json.dumps(pretty, indent=1).replace("\n", "").encode() + b"\n", *original[4:]]
        )
    )
    result = verify_bundle(bundle)
    _fails(result, "manifest_mismatch")  # every event verifies, but the file is not the exported one


def test_bundle_slice_verifies_from_its_frontier(
    store: Store, factory: RequestFactory, tmp_path: Path
) -> None:
    build_ledger(store, factory, make_signer())
    out = tmp_path / "slice"
    manifest = export_store(store, out, origin=ORIGIN, from_seq=10, to_seq=30)
    assert manifest["events"]["count"] == 21 and manifest["frontier"]
    result = verify_bundle(out)
    assert result.ok and result.first_seq == 10, result.summary()
    manifest["frontier"][0] = "00" * 32  # a forged frontier cannot reproduce the signed roots
    (out / "manifest.json").write_text(json.dumps(manifest))
    _fails(verify_bundle(out), "root_mismatch")


def test_bundle_verifies_in_a_separate_process_without_database_or_server(
    bundle: Path, tmp_path: Path
) -> None:
    keys = json.loads((bundle / "keys.json").read_text())
    script = (
        "import sys\n"
        "from keyturn.ledger.__main__ import main\n"
        "code = main(sys.argv[1:])\n"
        "heavy = {'sqlalchemy', 'psycopg', 'fastapi', 'pydantic', 'alembic'}\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & heavy)\n"
        "assert not loaded, loaded\n"
        "sys.exit(code)\n"
    )
    args = [
        "verify",
        "--bundle",
        str(bundle),
        "--checkpoint",
        str(tmp_path / "witness" / "latest"),
        "--key",
        keys[0]["verifier_key"],
    ]
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: 46 events") and "pinned key" in done.stdout
    lines = _lines(bundle)
    lines[2] = lines[2].replace(b'"comment":"ok"', b'"comment":"OK"')
    (bundle / "events.jsonl").write_bytes(b"".join(lines))
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1 and "FAILED: event seq 2 (events.jsonl:3)" in done.stdout, done.stdout


def test_ledger_verify_command_loads_only_what_verifying_needs(bundle: Path, tmp_path: Path) -> None:
    # `keyturn ledger verify` runs per bundle in auditors' scripts: its whole-process time is its imports
    # (issue #12). The command's module must not pull the store, the server or `rich` (only an error needs
    # it); the CLI loads this module alone for `keyturn ledger …` (lazy subcommands). (pydantic is not in
    # the list: typer itself imports it.)
    script = (
        "import sys\n"
        "from keyturn.commands.ledger import app\n"
        "try:\n"
        "    app(sys.argv[1:], prog_name='keyturn ledger')\n"
        "except SystemExit as exit:\n"
        "    heavy = {'sqlalchemy', 'psycopg', 'fastapi', 'alembic', 'httpx', 'rich'}\n"
        "    loaded = sorted({m.split('.')[0] for m in sys.modules} & heavy)\n"
        "    loaded += sorted({'keyturn.store'} & set(sys.modules))\n"
        "    print('loaded:', loaded)\n"
        "    raise\n"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, "verify", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"},
        )

    done = run("--bundle", str(bundle))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: 46 events") and "loaded: []" in done.stdout, done.stdout
    refused = run("--bundle", str(bundle), "--database", "sqlite:///nowhere.db")  # the error path still works
    assert refused.returncode == 2 and "error: give one of --bundle DIR or --database URL" in refused.stderr
