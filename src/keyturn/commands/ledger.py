"""`keyturn ledger …`: verify, export, prove, check-proof, report.

They read the same configuration as `keyturn serve` (`--config`, KEYTURN_CONFIG, KEYTURN_* variables);
`--database URL` overrides the configured database. `verify`, `prove` and `check-proof` also work on an
exported bundle (`--bundle DIR`) with no database and no configuration at all.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keyturn.ledger.note import NoteError, VerifierKey
from keyturn.ledger.verify import CheckpointSource

if TYPE_CHECKING:
    from keyturn.config import Settings
    from keyturn.ledger.live import LiveLedger
    from keyturn.store import Store

app = typer.Typer(no_args_is_help=True)

BundleOption = Annotated[Path | None, typer.Option("--bundle", help="an exported bundle directory")]
UrlOption = Annotated[str | None, typer.Option("--database", help="sqlite:///PATH or postgresql://…")]
CheckpointFiles = Annotated[
    list[Path] | None, typer.Option("--checkpoint", help="a checkpoint kept elsewhere (repeatable)")
]
KeyOption = Annotated[
    list[str] | None, typer.Option("--key", help="trusted verifier key name+hash+base64 (repeatable)")
]
ConfigOption = Annotated[Path | None, typer.Option("--config", envvar="KEYTURN_CONFIG", help="keyturn.yaml")]


def failure(message: str, code: int = 2, hint: str | None = None) -> typer.Exit:
    """`keyturn.commands.output.failure` (same defaults), imported only when there is an error to print:
    it loads `rich`, which a passing `keyturn ledger verify` (run per bundle by auditors' scripts) never
    needs."""
    from keyturn.commands.output import failure as report

    return report(message, code, hint)


def _trusted(keys: list[str] | None) -> list[VerifierKey]:
    try:
        return [VerifierKey.parse(k) for k in keys or []]
    except NoteError as exc:
        raise failure(f"--key: {exc}") from exc


def _external(files: list[Path] | None) -> list[CheckpointSource]:
    sources = []
    for path in files or []:
        try:
            sources.append(CheckpointSource(path.read_text(encoding="utf-8"), str(path), external=True))
        except (OSError, UnicodeDecodeError) as exc:
            raise failure(f"--checkpoint {path}: {exc}") from exc
    return sources


def _open_store(url: str) -> Store:
    from keyturn.store import Store, StoreError

    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.exists():  # opening it would create an empty database
            raise failure(f"no database at {path} (give --config keyturn.yaml or --database URL)")

    try:
        store = Store.open(url)
        store.head_seq()
    except (StoreError, ValueError) as exc:
        raise failure(f"--database: {exc}") from exc
    except Exception as exc:  # e.g. no tables: not a keyturn database
        raise failure(
            f"--database {url.split('@')[-1]}: not a keyturn database ({exc.__class__.__name__})"
        ) from exc
    return store


def _open_ledger(config: Path | None, database: str | None) -> tuple[LiveLedger, Settings]:
    """The live ledger of the configured (or given) database. Its origin is the configured one when a
    configuration is given; with only --database, the one the stored checkpoints carry."""
    from keyturn.commands._common import settings
    from keyturn.ledger.live import LiveLedger

    configured = settings(config, database)
    store = _open_store(configured.database)
    return LiveLedger(store, configured.ledger.origin if config else None), configured


@app.command()
def verify(
    database: UrlOption = None,
    bundle: BundleOption = None,
    checkpoint: CheckpointFiles = None,
    key: KeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Recompute the tree, check every checkpoint signature and consistency with checkpoints kept elsewhere.

    Prints one OK line with counts, or the first bad event or checkpoint and what is wrong (exit 1).
    """
    from keyturn.ledger.bundle import BundleError, verify_bundle

    if bundle is not None and database is not None:
        raise failure("give one of --bundle DIR or --database URL, not both")
    trusted, external = _trusted(key), _external(checkpoint)
    if bundle is not None:
        try:
            result = verify_bundle(bundle, external, trusted)
        except BundleError as exc:
            raise failure(str(exc)) from exc
    else:
        ledger, _ = _open_ledger(config, database)
        try:
            result = ledger.verify(external, trusted)
        finally:
            ledger.store.close()
    typer.echo(json.dumps(result.as_dict(), indent=2) if as_json else result.summary())
    raise typer.Exit(0 if result.ok else 1)


def _seq_or_time(value: str | None, option: str) -> int | datetime | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    return _when(value, option)


def _when(value: str, option: str, end: bool = False) -> datetime:
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime.combine(day, time.max if end else time.min, tzinfo=UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise failure(
            f"{option}: expected a seq number, a date (2030-01-31) or an ISO time, not {value!r}"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _seq_at(store: Store, moment: datetime, first_after: bool) -> int:
    """The first seq at or after `moment` (first_after) or the last before or at it."""
    after, found = -1, -1
    while True:
        batch = store.events(after_seq=after, limit=5000)
        for event in batch:
            if event.ts >= moment if first_after else event.ts > moment:
                return event.seq if first_after else found
            found = event.seq
        if len(batch) < 5000:
            return found + 1 if first_after else found
        after = batch[-1].seq


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="bundle directory to write")],
    from_: Annotated[str | None, typer.Option("--from", help="first seq or date (default: 0)")] = None,
    to: Annotated[str | None, typer.Option("--to", help="last seq or date (default: newest)")] = None,
    config: ConfigOption = None,
    database: UrlOption = None,
) -> None:
    """Write a self-contained bundle: events JSONL, signed checkpoints, public keys, a manifest."""
    from keyturn.errors import ServiceError

    ledger, configured = _open_ledger(config, database)
    store = ledger.store
    try:
        start, end = _seq_or_time(from_, "--from"), _seq_or_time(to, "--to")
        from_seq = _seq_at(store, start, True) if isinstance(start, datetime) else (start or 0)
        to_seq = _seq_at(store, end, False) if isinstance(end, datetime) else end
        try:
            manifest = ledger.export(
                out, fallback_origin=configured.ledger.origin, from_seq=from_seq, to_seq=to_seq
            )
        except ServiceError as exc:
            raise failure(exc.message) from exc
    finally:
        store.close()
    events = manifest["events"]
    typer.echo(
        f"wrote {out}: {events['count']} events (seq {events['first_seq']}..{events['last_seq']}), "
        f"{len(manifest['checkpoints'])} checkpoints, {manifest['keys']['count']} keys"
    )


def inclusion_from_bundle(path: Path, seq: int) -> dict[str, Any]:
    from keyturn.ledger.bundle import BundleError, read_bundle
    from keyturn.ledger.merkle import MerkleTree, hash_leaf
    from keyturn.ledger.note import SignedCheckpoint
    from keyturn.ledger.prove import inclusion_document

    try:
        bundle = read_bundle(path)
    except BundleError as exc:
        raise failure(str(exc)) from exc
    if bundle.first_seq != 0:
        raise failure("proofs need a bundle exported from seq 0")
    checkpoints = sorted(
        (SignedCheckpoint.parse(s.raw) for s in bundle.checkpoint_sources()), key=lambda c: c.size
    )
    covering = [c for c in checkpoints if c.size > seq]
    if not covering:
        raise failure(f"no checkpoint in the bundle covers seq {seq}", 1)
    newest = covering[-1]
    tree = MerkleTree()
    leaf = b""
    for entry in bundle.entries():
        if tree.size == seq:
            leaf = entry.leaf
        tree.append(hash_leaf(entry.leaf))
        if tree.size == newest.size:
            break
    names = {s.name for s in newest.note.signatures}
    vkey = next((k.verifier_key for k in bundle.key_entries if k.name in names), None)
    return inclusion_document(leaf, seq, tree, newest.raw, vkey)


@app.command()
def prove(
    seq: Annotated[int, typer.Argument(help="the event's seq", min=0)],
    database: UrlOption = None,
    bundle: BundleOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="write the proof here instead of stdout")] = None,
    config: ConfigOption = None,
) -> None:
    """Print an inclusion proof of one event against the newest signed checkpoint covering it."""
    from keyturn.errors import ServiceError

    if bundle is not None and database is not None:
        raise failure("give one of --bundle DIR or --database URL, not both")
    if bundle is not None:
        document = inclusion_from_bundle(bundle, seq)
    else:
        ledger, _ = _open_ledger(config, database)
        try:
            document = ledger.inclusion(seq)
        except ServiceError as exc:
            raise failure(exc.message, 1) from exc
        finally:
            ledger.store.close()
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote inclusion proof of seq {seq} at size {document['tree_size']} to {out}")


@app.command("check-proof")
def check_proof(
    file: Annotated[Path, typer.Argument(help="a proof written by `keyturn ledger prove`")],
    key: KeyOption = None,
) -> None:
    """Check an inclusion proof with the public key alone (exit 1 when it does not prove its event)."""
    from keyturn.ledger.prove import InvalidProof, check_inclusion_document

    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise failure(f"{file}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise failure(f"{file}:{exc.lineno}:{exc.colno}: {exc.msg}") from exc
    try:
        typer.echo(check_inclusion_document(document, _trusted(key)))
    except InvalidProof as exc:
        typer.echo(f"INVALID: {exc}")
        raise typer.Exit(1) from exc


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="file to write (report.html or report.json)")],
    format_: Annotated[str, typer.Option("--format", help="html or json")] = "html",
    from_: Annotated[str | None, typer.Option("--from", help="start date or ISO time")] = None,
    to: Annotated[str | None, typer.Option("--to", help="end date or ISO time (inclusive)")] = None,
    config: ConfigOption = None,
    database: UrlOption = None,
) -> None:
    """Audit evidence for a period: every executed action's approval chain, totals, anomalies, controls."""
    from keyturn.ledger.live import store_entries
    from keyturn.ledger.report import build_report, render_html

    if format_ not in ("html", "json"):
        raise failure("--format: html or json")
    start = _when(from_, "--from") if from_ else None
    end = _when(to, "--to", end=True) if to else None
    ledger, configured = _open_ledger(config, database)
    store = ledger.store
    try:
        verification = ledger.verify([], [])
        events = (json.loads(e.leaf) for e in store_entries(store))
        evidence = build_report(
            events,
            origin=verification.origin or configured.ledger.origin,
            start=start,
            end=end,
            verification=verification,
            checkpoints=store.checkpoints(),
        )
    finally:
        store.close()
    if format_ == "json":
        out.write_text(json.dumps(evidence, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        out.write_text(render_html(evidence), encoding="utf-8")
    totals = evidence["totals"]
    typer.echo(
        f"wrote {out}: {totals['executed']} executed actions, {totals['requests']} requests, "
        f"{len(evidence['anomalies'])} anomalies; "
        f"ledger {'verified' if verification.ok else 'FAILED verification'}"
    )


@app.command("check-value")
def check_value(
    seq: Annotated[int, typer.Argument(help="the event's seq", min=0)],
    path: Annotated[
        str,
        typer.Argument(help="dotted path of the redacted value (or of a keyed digest: params_digest)"),
    ],
    value: Annotated[str, typer.Argument(help="the value to check (a string; JSON with --json)")],
    key_file: Annotated[
        list[Path],
        typer.Option(
            "--key-file", help="a redaction key file from the server's data_dir/redaction (repeatable)"
        ),
    ],
    database: UrlOption = None,
    bundle: BundleOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="VALUE is JSON (a number, an object…)")] = False,
) -> None:
    """Check that a redacted value in the ledger is VALUE, with the server's redaction key.

    PATH may also name a keyed digest field, such as `params_digest` (VALUE: the whole params, with --json).

    The ledger keeps only a keyed digest (HMAC-SHA256) of what it redacts, so holding the ledger is not
    enough to confirm a guess; an auditor given the key can. Exit 0: it is that value; 1: it is not; 2:
    the event, path or key is missing. Run `keyturn ledger verify` first to know the event is genuine.
    """
    from keyturn.redact import REDACTED_KEY, check_digest, digest_kid
    from keyturn.signing_keys import KeyRingError, load_redaction_key

    if (database is None) == (bundle is None):
        raise failure("give exactly one of --database URL or --bundle DIR")
    keys = {}
    for file in key_file:
        try:
            key = load_redaction_key(file)
        except (OSError, KeyRingError) as exc:
            raise failure(f"--key-file {file}: {exc}") from exc
        keys[key.kid] = key
    try:
        candidate: Any = json.loads(value) if as_json else value
    except ValueError as exc:
        raise failure(f"VALUE is not JSON ({exc}); without --json it is taken as a string") from exc
    payload = _event_payload(seq, database, bundle)
    node: Any = payload
    for part in (p for p in path.split(".") if p):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise failure(f"event {seq} has nothing at {path!r} (stopped at {part!r})")
    if isinstance(node, dict) and set(node) == {REDACTED_KEY} and isinstance(node[REDACTED_KEY], str):
        digest = node[REDACTED_KEY]
    elif isinstance(node, str) and digest_kid(node) is not None:
        digest = node  # a keyed digest field itself: `params_digest` of a whole params document
    else:
        raise failure(f"{path!r} of event {seq} is not redacted: it is in the event as it is")
    kid = digest_kid(digest)
    if kid is not None and kid not in keys:
        raise failure(f"{path!r} of event {seq} is keyed with key {kid}, which no --key-file holds")
    if check_digest(digest, candidate, keys):
        typer.echo(f"match: {path} of event {seq} is that value" + (f" (key {kid})" if kid else " (unkeyed)"))
        return
    typer.echo(f"no match: {path} of event {seq} is not that value")
    raise typer.Exit(1)


def _event_payload(seq: int, database: str | None, bundle: Path | None) -> dict[str, Any]:
    if bundle is not None:
        from keyturn.ledger.bundle import BundleError, read_bundle

        try:
            for event in read_bundle(bundle).events():
                if event.get("seq") == seq:
                    payload: dict[str, Any] = event.get("payload", {})
                    return payload
        except BundleError as exc:
            raise failure(str(exc)) from exc
        raise failure(f"no event with seq {seq} in {bundle}")
    assert database is not None
    store = _open_store(database)
    try:
        events = store.events(after_seq=seq - 1, limit=1)
    finally:
        store.close()
    if not events or events[0].seq != seq:
        raise failure(f"no event with seq {seq}")
    return events[0].payload


@app.command("export-redaction-key")
def export_redaction_key(
    kid: Annotated[str, typer.Argument(help="the key id, as in a digest hmac-sha256:KID:…")],
    out: Annotated[Path, typer.Option("--out", help="the key file to write (mode 0600)")],
    config: ConfigOption = None,
) -> None:
    """Write one redaction key to a file for an auditor (`ledger check-value --key-file`). Whoever holds it
    can confirm guesses of the values it digested: hand it over like the secret it is."""
    from datetime import UTC, datetime

    from keyturn.commands._common import admin_service
    from keyturn.signing_keys import KeyRingError, redaction_key_text

    with admin_service(config, None) as admin:
        try:
            key = admin.keyring.redaction_keys().get(kid)
        except (OSError, KeyRingError) as exc:
            raise failure(f"redaction key: {exc}") from exc
    if key is None:
        raise failure(f"no redaction key {kid!r} on this server", 1)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise failure(f"--out {out}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as sink:
        sink.write(redaction_key_text(key, datetime.now(UTC).replace(microsecond=0)))
    typer.echo(f"wrote redaction key {kid} to {out}")


@app.command("rotate-redaction-key")
def rotate_redaction_key(config: ConfigOption = None) -> None:
    """Make a new redaction key current (data_dir/redaction). Older keys stay, so every digest they made can
    still be checked; replicas pick the new key up on their next request."""
    from keyturn.commands._common import admin_service
    from keyturn.signing_keys import KeyRingError

    with admin_service(config, None) as admin:
        try:
            key = admin.keyring.rotate_redaction_key()
        except (OSError, KeyRingError) as exc:
            raise failure(f"redaction key: {exc}") from exc
        where = admin.keyring.storage
    typer.echo(f"redaction key {key.kid} is current (kept in the {where})")
