"""The review queue reads `pending_route_groups` (issue #12): the index holds exactly the pending requests of
each route group, kept in the transactions that create and decide them; the queue answers what the full
listing answers, page for page; and the database reads only the caller's groups' slice of it."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import insert, select, text

from keyturn import workflow
from keyturn.model import RequestRecord, ReviewDecision, Status
from keyturn.store import Store
from keyturn.store import store as store_module
from keyturn.store.schema import pending_route_groups, request_groups, requests

if TYPE_CHECKING:
    from conftest import RequestFactory


def indexed(store: Store) -> set[tuple[str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(pending_route_groups.c.group, pending_route_groups.c.request_id)).all()
    return {(row.group, row.request_id) for row in rows}


def test_index_holds_exactly_the_pending_requests_of_each_group(
    store: Store, factory: RequestFactory
) -> None:
    sre = factory.insert(store, factory.review_verdict("sre"))
    both = factory.insert(store, factory.review_verdict("sre", "security"))
    denied = factory.insert(store, factory.review_verdict("security"))
    expiring = factory.insert(store, factory.review_verdict("sre", ttl=timedelta(minutes=5)))
    factory.insert(store, factory.allow_verdict())  # never pending: never indexed
    assert indexed(store) == {
        ("sre", sre.id),
        ("sre", both.id),
        ("security", both.id),
        ("security", denied.id),
        ("sre", expiring.id),
    }

    approve = workflow.review(
        sre,
        factory.human("alice", "sre"),
        ReviewDecision.APPROVE,
        "ok",
        factory.tick(),
        grant_id=factory.grant_id(),
    )
    store.apply(approve, expected_version=sre.version)
    deny = workflow.review(
        denied,
        factory.human("sam", "security"),
        ReviewDecision.DENY,
        "no",
        factory.tick(),
        grant_id=factory.grant_id(),
    )
    store.apply(deny, expected_version=denied.version)
    at = expiring.created_at + timedelta(minutes=6)
    assert (
        store.process_due(at, lambda r: workflow.due_transition(r, at) if r.id == expiring.id else None) == 1
    )
    assert indexed(store) == {("sre", both.id), ("security", both.id)}

    store.apply(workflow.cancel(both, factory.agent, factory.tick()), expected_version=both.version)
    assert indexed(store) == set()
    with store.engine.connect() as conn:  # the groups of decided requests stay, for the full listing
        assert len(conn.execute(select(request_groups)).all()) == 5


def test_a_failed_transition_leaves_the_index_as_it_was(
    store: Store, factory: RequestFactory, monkeypatch: Any
) -> None:
    record = factory.insert(store, factory.review_verdict("sre"))
    cancel = workflow.cancel(record, factory.agent, factory.tick())

    def crash(*args: Any) -> None:
        raise RuntimeError("crash after the index update")

    monkeypatch.setattr(Store, "_append_events", crash)
    with pytest.raises(RuntimeError):
        store.apply(cancel, expected_version=record.version)
    assert indexed(store) == {("sre", record.id)}
    assert store.get(record.id) == record


def _queue(store: Store, groups: set[str], limit: int) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = store.list_requests(
            status=Status.PENDING, reviewable_groups=groups, limit=limit, cursor=cursor
        )
        seen += [r.id for r in page]
        if cursor is None:
            return seen


def test_queue_pages_equal_the_full_listing_filtered_by_group(store: Store, factory: RequestFactory) -> None:
    rng = random.Random(12)
    names = ["sre", "security", "dba", "audit"]
    stored: list[RequestRecord] = []
    for _ in range(70):
        if rng.random() < 0.4:
            factory.now -= timedelta(seconds=1)  # shared created_at: the id breaks ties, in the index too
        groups = rng.sample(names, rng.randint(1, 3))
        record = factory.insert(store, factory.review_verdict(*groups))
        if rng.random() < 0.35:
            store.apply(
                workflow.cancel(record, factory.agent, factory.tick()), expected_version=record.version
            )
        stored.append(record)

    everything, cursor = store.list_requests(status=Status.PENDING, limit=1000)
    assert cursor is None and 20 < len(everything) < 70
    for groups in ({"sre"}, {"security", "dba"}, {"sre", "security", "dba", "audit"}, {"audit", "nobody"}):
        expected = [
            r.id
            for r in everything
            if r.verdict.route is not None
            and groups & {g for req in r.verdict.route.requirements for g in req.groups}
        ]
        for limit in (1, 3, 7, 100):
            assert _queue(store, groups, limit) == expected, (groups, limit)
    assert _queue(store, {"nobody"}, 5) == []


def _bulk(store: Store, group: str, status: str, count: int, start: datetime) -> None:
    """Rows straight into the tables (what the benchmark does), so the planner sees realistic sizes."""
    rows = [
        {
            "id": f"req_{group}_{status}_{i:06d}",
            "status": status,
            "action": "db.export",
            "resource": "",
            "requester": "agent:bulk",
            "created_at": start + timedelta(seconds=i),
            "updated_at": start + timedelta(seconds=i),
            "version": 1,
            "record": json.dumps({}),
        }
        for i in range(count)
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(requests), rows)
        conn.execute(insert(request_groups), [{"request_id": r["id"], "group": group} for r in rows])
        if status == "pending":
            conn.execute(
                insert(pending_route_groups),
                [{"group": group, "created_at": r["created_at"], "request_id": r["id"]} for r in rows],
            )


def _plan(store: Store, groups: set[str], limit: int) -> tuple[str, Any]:
    query = store_module._review_queue_query(groups, None, limit)
    with store.engine.connect() as conn:
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        if store.backend == "sqlite":
            plan = conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")).all()
            return "\n".join(row[-1] for row in plan), None
        conn.execute(text("ANALYZE"))
        analysed = conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")).scalar_one()
        return "", analysed[0]["Plan"]


def _scanned_rows(node: dict[str, Any]) -> int:
    """Rows that scan nodes of a PostgreSQL plan produced, over all their loops."""
    own = node["Actual Rows"] * node["Actual Loops"] if "Scan" in node["Node Type"] else 0
    return own + sum(_scanned_rows(child) for child in node.get("Plans", []))


def test_queue_reads_only_its_groups_slice_of_the_index(store: Store) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    _bulk(store, "other", "pending", 3000, start)  # pending, but routed to a group the caller is not in
    _bulk(store, "sre", "approved", 3000, start)  # the caller's group, decided
    _bulk(store, "sre", "pending", 40, start)
    limit = 10

    with store.engine.connect() as conn:  # a page and one more (there is a next page), newest first
        rows = conn.execute(store_module._review_queue_query({"sre", "dba"}, None, limit)).all()
    assert [row.id for row in rows] == [f"req_sre_pending_{i:06d}" for i in range(39, 39 - limit - 1, -1)]

    plan, analysed = _plan(store, {"sre", "dba"}, limit)
    if store.backend == "sqlite":
        # Each group is a SEARCH of the primary key (group, created_at, request_id), walked newest first
        # and stopped after one page; the candidates drive the join and fetch requests by primary key,
        # never by walking the requests' (status, created_at) index through every pending request.
        assert plan.count("SEARCH pending_route_groups USING COVERING INDEX") == 2, plan
        assert "SEARCH requests USING INDEX sqlite_autoindex_requests_1 (id=?)" in plan, plan
        assert "SCAN requests" not in plan and "SCAN pending_route_groups" not in plan, plan
        assert "ix_requests_" not in plan and "request_groups" not in plan, plan
    else:
        # Per group at most one page (limit + 1) of index rows, and that many request rows: not the 3,000
        # pending of another group nor the 3,000 decided of this one.
        assert _scanned_rows(analysed) <= 4 * (limit + 1), json.dumps(analysed, indent=1)
