"""Shared fixtures.

Databases: `database_url` runs a test on SQLite (a file under tmp_path) and on PostgreSQL (a fresh schema
per test in the database named by KEYTURN_TEST_POSTGRES_URL). PostgreSQL being unreachable FAILS the
PostgreSQL variants: CI has it, and a silently skipped backend would hide real failures.
`postgres_url` is the PostgreSQL variant alone, for tests about replicas. `store` is an upgraded `Store`.

Requests: `factory` builds transitions through the real `keyturn.workflow` (never hand-made records), with
its own clock, so stored states are states the lifecycle can actually reach.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy.engine import make_url

from keyturn import workflow
from keyturn.model import (
    ActionRequest,
    Decision,
    Escalation,
    Principal,
    PrincipalKind,
    RequestRecord,
    Requirement,
    Route,
    Verdict,
)
from keyturn.store import DecisionRecord, Store

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


# CI (CI=true, as .ci/run is run) explores the same examples on every run, so a landing never depends on
# the luck of a seed; local runs stay random and keep finding new cases (a failure prints its blob).
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile("dev", deadline=None, print_blob=True)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: needs the PostgreSQL of KEYTURN_TEST_POSTGRES_URL")


@contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """A URL whose connections all use a new empty schema (search_path), dropped afterwards."""
    base = os.environ.get("KEYTURN_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    schema = "kt_" + secrets.token_hex(6)
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {base} is unreachable (set KEYTURN_TEST_POSTGRES_URL): {exc}")
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keyturn.db'}"
        return
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store.open(database_url)
    opened.upgrade()
    try:
        yield opened
    finally:
        opened.close()


# --- requests -----------------------------------------------------------------------------------------


class RequestFactory:
    """Submits requests through `keyturn.workflow.submit`; each submit moves the clock one second on."""

    agent = Principal(id="agent:deploy-bot", kind=PrincipalKind.AGENT)

    @staticmethod
    def human(name: str, *groups: str) -> Principal:
        return Principal(id=f"user:{name}@example.com", kind=PrincipalKind.HUMAN, groups=frozenset(groups))

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
        self._ids = itertools.count(1)

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def review_verdict(
        self,
        *groups: str,
        count: int = 1,
        ttl: timedelta = timedelta(hours=1),
        escalate: tuple[Escalation, ...] = (),
    ) -> Verdict:
        route = Route(
            requirements=(Requirement(groups=groups or ("sre",), count=count),), ttl=ttl, escalate=escalate
        )
        return Verdict(decision=Decision.REVIEW, route=route, policy_revision="sha256:test")

    def allow_verdict(self) -> Verdict:
        return Verdict(decision=Decision.ALLOW, policy_revision="sha256:test")

    def submit(
        self,
        verdict: Verdict | None = None,
        *,
        requester: Principal | None = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> workflow.Transition:
        n = next(self._ids)
        request = ActionRequest(
            action="db.export",
            resource="postgres://prod/customers",
            params={"rows": 5000} if params is None else params,
            justification="quarterly report",
            requester=requester or self.agent,
            idempotency_key=idempotency_key,
        )
        return workflow.submit(
            request_id or f"req_{n:06d}{secrets.token_hex(4)}",
            request,
            verdict or self.review_verdict(),
            self.tick(),
            f"gr_{n:06d}{secrets.token_hex(4)}",
        )

    def decision(self, transition: workflow.Transition) -> DecisionRecord:
        record = transition.record
        return DecisionRecord(
            ts=record.created_at,
            request_id=record.id,
            request_digest="sha256:" + "0" * 64,
            decision=record.verdict.decision.value,
            rules=["test rule"],
            policy_revision=record.verdict.policy_revision,
        )

    def insert(self, store: Store, verdict: Verdict | None = None, **kwargs: Any) -> RequestRecord:
        transition = self.submit(verdict, **kwargs)
        return store.insert_request(transition, self.decision(transition), None)

    def grant_id(self) -> str:
        return f"gr_{next(self._ids):06d}{secrets.token_hex(4)}"


@pytest.fixture
def factory() -> RequestFactory:
    return RequestFactory()


# --- live servers -------------------------------------------------------------------------------------


@pytest.fixture
def live_servers(tmp_path: Path) -> Iterator[Any]:
    """`live_servers(**kwargs)` starts a real `keyturn serve` (see start_server); all stop at the end."""
    from support.live import LiveServer, start_server

    started: list[LiveServer] = []

    def start(**kwargs: Any) -> LiveServer:
        server = start_server(tmp_path / f"server{len(started)}", **kwargs)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def live_server(live_servers: Any) -> Any:
    """One real `keyturn serve` on SQLite with the default test policy, users and agents (support/live.py)."""
    return live_servers()
