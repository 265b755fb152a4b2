"""The ledger's commands (prove, check-proof, export, verify, report), its auditor-only API, and two
replicas appending to one PostgreSQL log."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from keyturn.commands.ledger import app as ledger_cli
from keyturn.ledger.checkpointer import Checkpointer
from keyturn.ledger.live import LiveLedger, verify_store
from keyturn.ledger.merkle import hash_leaf, verify_consistency, verify_inclusion
from keyturn.ledger.report import build_report
from keyturn.model import Principal, PrincipalKind, Role
from keyturn.server import deps, errors
from keyturn.server.api import ledger as ledger_api
from keyturn.service import Keyturn
from keyturn.store import Store
from support.ledger import ORIGIN, build_ledger, make_signer, register, run_request

if TYPE_CHECKING:
    from conftest import RequestFactory

runner = CliRunner()


def _config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "keyturn.yaml"
    config.write_text(f"database: {url}\nledger:\n  origin: {ORIGIN}\n")
    return config


def test_prove_and_check_proof(
    store: Store, factory: RequestFactory, tmp_path: Path, database_url: str
) -> None:
    signer = make_signer()
    build_ledger(store, factory, signer)
    proof_file = tmp_path / "proof.json"
    done = runner.invoke(ledger_cli, ["prove", "9", "--database", database_url, "--out", str(proof_file)])
    assert done.exit_code == 0, done.output
    document = json.loads(proof_file.read_text())
    assert document["event"]["seq"] == 9 and document["tree_size"] == 46
    assert document["verifier_key"] == str(signer.verifier)
    ok = runner.invoke(ledger_cli, ["check-proof", str(proof_file), "--key", str(signer.verifier)])
    assert ok.exit_code == 0 and ok.output.startswith("OK: event seq 9") and "pinned key" in ok.output
    # The event in the proof is what is proven: change it and the proof fails.
    document["event"]["payload"]["comment"] = "something else"
    proof_file.write_text(json.dumps(document))
    bad = runner.invoke(ledger_cli, ["check-proof", str(proof_file)])
    assert bad.exit_code == 1 and "INVALID: event seq 9 is not in the checkpointed tree" in bad.output
    wrong_key = runner.invoke(
        ledger_cli, ["check-proof", str(proof_file), "--key", str(make_signer().verifier)]
    )
    assert wrong_key.exit_code == 1 and "not trusted" in wrong_key.output
    # The same proof from an exported bundle.
    export = runner.invoke(
        ledger_cli, ["export", "--config", str(_config(tmp_path, database_url)), "--out", str(tmp_path / "b")]
    )
    assert export.exit_code == 0 and "46 events" in export.output, export.output
    from_bundle = runner.invoke(ledger_cli, ["prove", "9", "--bundle", str(tmp_path / "b")])
    assert from_bundle.exit_code == 0, from_bundle.output
    again = json.loads(from_bundle.output)
    assert again["audit_path"] == json.loads(proof_file.read_text())["audit_path"]
    beyond = runner.invoke(ledger_cli, ["prove", "999", "--database", database_url])
    assert beyond.exit_code == 1 and "no signed checkpoint covers seq 999" in beyond.output


def test_verify_command_on_database_and_bundle(
    store: Store, factory: RequestFactory, tmp_path: Path, database_url: str
) -> None:
    build_ledger(store, factory, make_signer(), tmp_path / "w")
    ok = runner.invoke(
        ledger_cli, ["verify", "--database", database_url, "--checkpoint", str(tmp_path / "w/latest")]
    )
    assert ok.exit_code == 0 and ok.output.startswith("OK: 46 events"), ok.output
    config = str(_config(tmp_path, database_url))
    runner.invoke(ledger_cli, ["export", "--config", config, "--out", str(tmp_path / "b"), "--from", "0"])
    as_json = runner.invoke(ledger_cli, ["verify", "--bundle", str(tmp_path / "b"), "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["ok"] is True
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM events WHERE seq = 4"))
    failed = runner.invoke(ledger_cli, ["verify", "--database", database_url])
    assert (
        failed.exit_code == 1
        and "FAILED: database event seq 5: expected the event with seq 4" in failed.output
    )
    for args, message in [
        (["verify"], "no database at keyturn.db (give --config keyturn.yaml or --database URL)"),
        (["verify", "--bundle", str(tmp_path), "--database", database_url], "not both"),
        (["verify", "--bundle", str(tmp_path)], "no such file"),
        (["verify", "--bundle", str(tmp_path / "b"), "--key", "nonsense"], "--key"),
        (["check-proof", str(tmp_path / "missing.json")], "missing.json"),
    ]:
        bad = runner.invoke(ledger_cli, args)
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)


def test_report_shows_every_execution_and_flags_anomalies(
    store: Store, factory: RequestFactory, tmp_path: Path, database_url: str
) -> None:
    build_ledger(store, factory, make_signer())
    config = _config(tmp_path, database_url)
    html = runner.invoke(ledger_cli, ["report", "--config", str(config), "--out", str(tmp_path / "r.html")])
    assert (
        html.exit_code == 0 and "6 executed actions, 7 requests, 0 anomalies; ledger verified" in html.output
    )
    page = (tmp_path / "r.html").read_text()
    assert "user:alice@example.com" in page and "The ledger verifies" in page and "AU-10" in page
    done = runner.invoke(
        ledger_cli,
        [
            "report",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "r.json"),
            "--format",
            "json",
            "--from",
            "2030-01-07",
            "--to",
            "2030-01-07",
        ],
    )
    assert done.exit_code == 0, done.output
    evidence = json.loads((tmp_path / "r.json").read_text())
    assert evidence["totals"]["executed"] == 6 and evidence["totals"]["denied"] == 1
    first = evidence["executions"][0]
    assert first["approvers"][0]["reviewer"] == "user:alice@example.com"
    assert (
        first["approvers"][0]["groups"] == ["sre"]
        and first["digests_match"]
        and first["outcome"] == "succeeded"
    )
    assert {c["control"] for c in evidence["controls"]} >= {"CC6.1", "A.8.15", "AC-5", "AU-9"}
    empty = runner.invoke(
        ledger_cli,
        [
            "report",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "e.json"),
            "--format",
            "json",
            "--from",
            "2031-01-01",
        ],
    )
    assert empty.exit_code == 0 and json.loads((tmp_path / "e.json").read_text())["totals"]["executed"] == 0
    bad = runner.invoke(ledger_cli, ["report", "--config", str(config), "--out", "x", "--from", "soon"])
    assert bad.exit_code == 2 and "--from" in bad.output


def test_report_flags_each_impossible_anomaly(store: Store, factory: RequestFactory) -> None:
    build_ledger(store, factory, make_signer(), requests=4)
    events = [json.loads(e.leaf_bytes()) for e in store.events(limit=100)]
    assert build_report(events, origin=ORIGIN)["anomalies"] == []
    # Forge, in memory, the four histories the workflow makes impossible (one request each).
    by_request: dict[str, list[dict[str, object]]] = {}
    for event in events:
        by_request.setdefault(str(event["request_id"]), []).append(event)
    first, second, third, fourth = [v for v in by_request.values() if len(v) == 7]
    first[:] = [e for e in first if e["type"] not in ("request.approved", "request.reviewed")]
    second[2]["payload"]["reviewer"] = "agent:deploy-bot"  # type: ignore[index]
    second[3]["payload"]["approvers"] = [{"reviewer": "agent:deploy-bot", "requirement": "1 from sre"}]  # type: ignore[index]
    third[2]["ts"] = "2031-01-01T00:00:00.000000Z"
    fourth[5]["payload"]["params_digest"] = "sha256:" + "0" * 64  # type: ignore[index]
    forged = [e for chain in (first, second, third, fourth) for e in chain]
    checks = {(a["request_id"], a["check"]) for a in build_report(forged, origin=ORIGIN)["anomalies"]}
    ids = [str(c[0]["request_id"]) for c in (first, second, third, fourth)]
    assert (ids[0], "unapproved_execution") in checks
    assert (ids[1], "self_approval") in checks
    assert (ids[2], "late_approval") in checks
    assert (ids[3], "params_mismatch") in checks


# --- API ----------------------------------------------------------------------------------------------


def _api(store: Store, roles: frozenset[Role]) -> TestClient:
    app = FastAPI()
    errors.install(app)
    app.include_router(ledger_api.router)
    svc = _LedgerService(store)
    who = Principal(id="user:audrey@example.com", kind=PrincipalKind.HUMAN, roles=roles)
    app.dependency_overrides[deps.service] = lambda: svc
    app.dependency_overrides[deps.principal] = lambda: who
    return TestClient(app)


class _LedgerService:
    """Just the ledger part of the service, with the service's own authorisation (`Keyturn.ledger`)."""

    ledger = Keyturn.ledger

    def __init__(self, store: Store) -> None:
        self.live_ledger = LiveLedger(store, ORIGIN)
        self.settings = SimpleNamespace(ledger=SimpleNamespace(origin=ORIGIN))


def test_api_is_for_auditors_only(store: Store) -> None:
    client = _api(store, frozenset({Role.ADMIN}))
    for path in (
        "/v1/ledger/events",
        "/v1/ledger/checkpoints",
        "/v1/ledger/proof/inclusion?seq=0",
        "/v1/ledger/proof/consistency?from=0&to=0",
        "/v1/ledger/export",
    ):
        answer = client.get(path)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden", path


def test_api_events_checkpoints_and_proofs(store: Store, factory: RequestFactory, tmp_path: Path) -> None:
    signer = make_signer()
    build_ledger(store, factory, signer)
    client = _api(store, frozenset({Role.AUDITOR}))
    page = client.get("/v1/ledger/events", params={"limit": 10}).json()
    assert [e["seq"] for e in page["items"]] == list(range(10)) and page["next_after_seq"] == 9
    assert page["items"][0]["checkpoint"]["key"] == signer.name
    approved = client.get("/v1/ledger/events", params={"type": "request.approved", "limit": 100}).json()
    assert len(approved["items"]) == 6 and approved["next_after_seq"] is None
    request_id = page["items"][0]["request_id"]
    mine = client.get("/v1/ledger/events", params={"request_id": request_id}).json()["items"]
    assert len(mine) == 7 and {e["request_id"] for e in mine} == {request_id}
    since = client.get("/v1/ledger/events", params={"since": "2030-01-07T09:00:10Z"}).json()["items"]
    assert since and all(e["ts"] >= "2030-01-07T09:00:10" for e in since)
    assert client.get("/v1/ledger/events", params={"since": "2030-01-07T09:00:10"}).status_code == 400
    cps = client.get("/v1/ledger/checkpoints").json()
    assert [c["size"] for c in cps["items"]] == [c.size for c in store.checkpoints()]
    assert cps["keys"][0]["verifier_key"] == str(signer.verifier)

    proof = client.get("/v1/ledger/proof/inclusion", params={"seq": 12}).json()
    verify_inclusion(
        12,
        proof["tree_size"],
        bytes.fromhex(proof["leaf_hash"]),
        [bytes.fromhex(h) for h in proof["audit_path"]],
        bytes.fromhex(proof["root_hash"]),
    )
    older = store.checkpoints()[2].size
    at_size = client.get("/v1/ledger/proof/inclusion", params={"seq": 1, "size": older}).json()
    assert at_size["tree_size"] == older
    missing = client.get("/v1/ledger/proof/inclusion", params={"seq": 1, "size": 3})
    assert missing.status_code == 404 and missing.json()["error"]["detail"]["field"] == "query.size"
    assert client.get("/v1/ledger/proof/inclusion", params={"seq": 500}).status_code == 404
    assert client.get("/v1/ledger/proof/inclusion", params={"seq": "x"}).status_code == 422

    cons = client.get("/v1/ledger/proof/consistency", params={"from": 7, "to": 46}).json()
    verify_consistency(
        7,
        46,
        bytes.fromhex(cons["from_root"]),
        bytes.fromhex(cons["to_root"]),
        [bytes.fromhex(h) for h in cons["proof"]],
    )
    assert cons["to_root"] == store.checkpoints()[-1].root_hash
    assert client.get("/v1/ledger/proof/consistency", params={"from": 9, "to": 999}).status_code == 400

    exported = client.get("/v1/ledger/export")
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/gzip"
    import io
    import tarfile

    from keyturn.ledger.bundle import verify_bundle

    with tarfile.open(fileobj=io.BytesIO(exported.content)) as archive:
        archive.extractall(tmp_path, filter="data")
    assert verify_bundle(tmp_path / "ledger-bundle").ok
    assert hash_leaf(b"") != b""  # keep the import honest


# --- replicas -----------------------------------------------------------------------------------------


def test_two_replicas_on_postgresql_append_one_consistent_tree(postgres_url: str) -> None:
    from conftest import RequestFactory

    replicas = [Store.open(postgres_url) for _ in range(2)]
    replicas[0].upgrade()
    signer = make_signer()
    register(replicas[0], signer, RequestFactory())
    checkpointers = [Checkpointer(s, signer, ORIGIN, every=3, interval=3600) for s in replicas]
    failures: list[BaseException] = []

    def work(store: Store, checkpointer: Checkpointer) -> None:
        factory = RequestFactory()
        try:
            for _ in range(12):
                run_request(store, factory)
                checkpointer.checkpoint()
        except BaseException as exc:  # reported below
            failures.append(exc)

    try:
        threads = [
            threading.Thread(target=work, args=pair) for pair in zip(replicas, checkpointers, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        checkpointers[0].checkpoint(force=True)
        store = replicas[1]
        seqs = [e.seq for e in store.events(limit=1000)]
        assert seqs == list(range(2 * 12 * 7))  # no gap, no fork
        result = verify_store(store, [], [])
        assert result.ok and result.covered == len(seqs), result.summary()
        assert result.checkpoints == len(store.checkpoints()) >= 10
    finally:
        for replica in replicas:
            replica.close()
