"""Migrations and connection setup: Alembic on an empty database, idempotent, concurrent, and in step with
the table definitions the store queries."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from keyturn.store import Store, StoreError
from keyturn.store.engine import normalise_url
from keyturn.store.migrate import current_revision, head_revision
from keyturn.store.schema import ledger_head, metadata

if TYPE_CHECKING:
    from conftest import RequestFactory

TABLES = {
    "requests",
    "request_groups",
    "pending_route_groups",
    "grants",
    "events",
    "ledger_head",
    "checkpoints",
    "ledger_keys",
    "decision_records",
    "api_keys",
    "console_sessions",
    "console_logins",
    "passkeys",
    "server_keys",
    "outbox",
    "message_refs",
    "channel_targets",
    "chat_links",
    "chat_link_codes",
    "chat_seen_signatures",
    "alembic_version",
}


def test_upgrade_creates_the_schema_on_an_empty_database(database_url: str) -> None:
    with Store.open(database_url) as store:
        assert current_revision(store.engine) is None
        assert set(inspect(store.engine).get_table_names()) == set()
        store.upgrade()
        assert current_revision(store.engine) == head_revision() == "0010_canonical_ids"
        assert set(inspect(store.engine).get_table_names()) == TABLES
        with store.engine.connect() as conn:
            assert conn.execute(select(ledger_head)).all() == [(1, 0)]
            if store.backend == "postgresql":  # in the test's own schema, via search_path
                assert conn.execute(text("SELECT current_schema()")).scalar_one().startswith("kt_")
        assert store.head_seq() == -1


def test_upgrade_is_idempotent_and_keeps_data(store: Store, factory: RequestFactory) -> None:
    record = factory.insert(store)
    store.upgrade()
    store.upgrade()
    assert store.get(record.id) == record and store.head_seq() == 1
    with store.engine.connect() as conn:
        assert conn.execute(select(ledger_head)).all() == [(1, 2)]


def test_migrations_match_the_table_definitions(store: Store) -> None:
    with store.engine.connect() as conn:
        differences = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), metadata
        )
    assert differences == []


def test_replicas_upgrading_at_once_all_succeed(database_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    replicas = [Store.open(database_url) for _ in range(4)]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(Store.upgrade, replicas))
        assert current_revision(replicas[0].engine) == head_revision()
        with replicas[0].engine.connect() as conn:
            assert conn.execute(select(ledger_head)).all() == [(1, 0)]
    finally:
        for replica in replicas:
            replica.close()


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: object) -> None:
    with Store.open(f"sqlite:///{tmp_path}/k.db") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u@db.example:5432/keyturn", "postgresql+psycopg"),
        ("postgres://u:p@db.example/keyturn", "postgresql+psycopg"),
        ("sqlite:///keyturn.db", "sqlite"),
    ],
)
def test_urls_are_normalised(url: str, driver: str) -> None:
    parsed, _ = normalise_url(url)
    assert parsed.drivername == driver
    assert parsed.host == (None if driver == "sqlite" else "db.example")


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite://", "sqlite:///:memory:", "not a url"])
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(StoreError):
        Store.open(url)


def test_0007_backfills_the_tier_of_pending_requests(database_url: str) -> None:
    from alembic import command

    from keyturn.store.migrate import alembic_config

    with Store.open(database_url) as store:
        with store.engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0001_initial")
            for request_id, status, tier in (("r1", "pending", "critical"), ("r2", "approved", "high")):
                record = {"verdict": {"route": {"tier": tier}}}
                conn.execute(
                    text(
                        "INSERT INTO requests (id, status, action, resource, requester, created_at, "
                        "updated_at, version, record) VALUES (:id, :status, 'a.b', '', 'agent:x', "
                        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1, :record)"
                    ),
                    {"id": request_id, "status": status, "record": json.dumps(record)},
                )
        store.upgrade()
        with store.engine.connect() as conn:
            tiers = dict(conn.execute(text("SELECT id, tier FROM requests")).all())
    assert tiers == {"r1": "critical", "r2": None}  # decided requests need no tier


def test_0009_indexes_the_groups_of_pending_requests_only(database_url: str) -> None:
    from alembic import command

    from keyturn.store.migrate import alembic_config

    with Store.open(database_url) as store:
        with store.engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0008_outbox")
            for request_id, status, groups in (
                ("r1", "pending", ["sre", "security"]),
                ("r2", "approved", ["sre"]),
                ("r3", "pending", []),
                ("r4", "pending", ["dba"]),
            ):
                conn.execute(
                    text(
                        "INSERT INTO requests (id, status, action, resource, requester, created_at, "
                        "updated_at, version, record) VALUES (:id, :status, 'a.b', '', 'agent:x', "
                        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1, '{}')"
                    ),
                    {"id": request_id, "status": status},
                )
                for group in groups:
                    conn.execute(
                        text('INSERT INTO request_groups (request_id, "group") VALUES (:id, :group)'),
                        {"id": request_id, "group": group},
                    )
        store.upgrade()
        with store.engine.connect() as conn:
            indexed = set(conn.execute(text('SELECT "group", request_id FROM pending_route_groups')).all())
            same_time = conn.execute(
                text(
                    "SELECT count(*) FROM pending_route_groups p JOIN requests r ON r.id = p.request_id "
                    "WHERE p.created_at = r.created_at"
                )
            ).scalar_one()
    assert indexed == {("sre", "r1"), ("security", "r1"), ("dba", "r4")}
    assert same_time == 3  # created_at copied as stored: the keyset order of the index is the requests'


def test_0010_folds_principal_ids_stored_before_the_canonical_form(
    database_url: str, factory: RequestFactory
) -> None:
    from alembic import command

    from keyturn.store.migrate import alembic_config

    def old_row(conn: Any, request_id: str, requester: str, key: str | None) -> None:
        # as the server wrote a request before ids were folded at every entry: the record JSON reads back
        # folded (the model folds), the columns that queries filter on kept the spelling that came in
        record = factory.submit(request_id=request_id, idempotency_key=key).record
        conn.execute(
            text(
                "INSERT INTO requests (id, status, action, resource, requester, on_behalf_of, created_at, "
                "updated_at, version, idempotency_key, record) VALUES (:id, 'pending', 'db.export', '', "
                ":requester, 'user:Bob@Example.COM', :at, :at, 1, :key, :record)"
            ),
            {
                "id": request_id,
                "requester": requester,
                "at": record.created_at,
                "key": key,
                "record": record.model_dump_json(),
            },
        )

    with Store.open(database_url) as store:
        with store.engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0008_outbox")
            old_row(conn, "req_old1", "agent:Deploy-Bot", "k1")
            old_row(conn, "req_old2", "agent:deploy-bot", "k2")
            # the same agent under two spellings reusing one key: folding both would break the unique key
            old_row(conn, "req_old3", "agent:deploy-bot", "k3")
            old_row(conn, "req_old4", "agent:DEPLOY-BOT", "k3")
            conn.execute(
                text(
                    "INSERT INTO api_keys (key_id, principal_id, kind, groups, secret_hash, created_at) "
                    "VALUES ('kt_1', 'user:Alice@Example.com', 'human', '[]', 'x', :at)"
                ),
                {"at": factory.now},
            )
        store.upgrade()
        with store.engine.connect() as conn:
            requesters = dict(conn.execute(text("SELECT id, requester FROM requests")).all())
            behalf = set(conn.execute(text("SELECT on_behalf_of FROM requests")).scalars())
            key_owner = conn.execute(text("SELECT principal_id FROM api_keys")).scalar_one()
        mine, _ = store.list_requests(requester="agent:deploy-bot", limit=10)

    assert requesters == {
        "req_old1": "agent:deploy-bot",
        "req_old2": "agent:deploy-bot",
        "req_old3": "agent:deploy-bot",
        "req_old4": "agent:DEPLOY-BOT",  # would collide on (requester, idempotency_key): left, and logged
    }
    assert behalf == {"user:bob@example.com"}
    assert key_owner == "user:alice@example.com"
    assert {record.id for record in mine} == {"req_old1", "req_old2", "req_old3"}
