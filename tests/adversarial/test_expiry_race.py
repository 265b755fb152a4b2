"""Reviewers race the deadline (guarantee 6): a request ends approved XOR expired, never both, never late.

Requests with a two-second ttl; around each deadline several reviewers fire approvals (most just before,
some just after) while the server's timer sweeps every 50 ms. Afterwards every request is approved or
expired, its ledger events say the same, and nothing was accepted at or after the deadline.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx

from keyturn.store import Store
from support.live import start_server

POLICY = """\
version: 1
defaults: {decision: review, approvers: [security], ttl: 1h}
rules:
  - name: one approver, two seconds
    match: {action: race.one}
    decision: review
    quorum: 1
    approvers: [sre]
    ttl: 2s
  - name: two approvers, two seconds
    match: {action: race.two}
    decision: review
    quorum: 2
    approvers: [sre]
    ttl: 2s
"""
AGENT = "agent:deploy-bot"
REVIEWERS = (
    "user:alice@example.com",
    "user:bob@example.com",
    "user:sam@example.com",
    "user:olivia@example.com",
)
REQUESTS = 16
EARLY, LATE = 0.15, 0.05  # approvals are sent from 150 ms before to 50 ms after the deadline


def test_approvals_racing_the_deadline_end_approved_xor_expired(tmp_path: Path) -> None:
    server = start_server(tmp_path / "race", policy=POLICY, settings={"timer_interval": 0.05})
    rng = random.Random(6)
    # one shared client: building an httpx.Client per call costs ~40 ms (TLS context), which would
    # push every approval past the deadline and make the race one-sided
    http = httpx.Client(limits=httpx.Limits(max_connections=100))
    try:
        with server.client(AGENT) as agent:
            submitted = [agent.submit("race.one" if i % 2 else "race.two", f"r{i}") for i in range(REQUESTS)]
        answers: Counter[tuple[int, str]] = Counter()

        def approve_at(request_id: str, who: str, at: float) -> None:
            time.sleep(max(0.0, at - time.time()))  # scheduling, not an assertion
            response = http.post(
                f"{server.url}/v1/actions/{request_id}/reviews",
                json={"decision": "approve", "comment": "racing"},
                headers=server.headers(who),
                timeout=10.0,
            )
            body = response.json()
            answers[(response.status_code, body["error"]["code"] if "error" in body else "ok")] += 1

        threads = []
        for item in submitted:
            deadline = datetime.fromisoformat(item["expires_at"]).timestamp()
            for who in REVIEWERS:
                at = deadline + rng.uniform(-EARLY, LATE)
                threads.append(threading.Thread(target=approve_at, args=(item["id"], who, at)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

        with server.client(AGENT) as agent:
            final = {item["id"]: agent.wait(item["id"], timeout=10) for item in submitted}

        store = Store.open(server.database_url)
        try:
            outcomes: Counter[str] = Counter()
            for request_id, view in final.items():
                record = store.get(request_id)
                assert record is not None and record.expires_at is not None
                assert view["status"] in ("approved", "expired"), view["status"]
                assert record.status.value == view["status"]
                outcomes[view["status"]] += 1
                events = store.events_for_request(request_id)
                types = [e.type for e in events]
                decided = [t for t in types if t in ("request.approved", "request.expired")]
                assert decided == [f"request.{view['status']}"], types
                accepted = [
                    e for e in events if e.type in ("request.reviewed", "request.approved", "grant.issued")
                ]
                assert all(e.ts < record.expires_at for e in accepted), (
                    "a review was accepted after the deadline"
                )
                assert all(r.at < record.expires_at for r in record.reviews)
                assert types.count("request.reviewed") == len(record.reviews)
                if view["status"] == "expired":
                    assert "grant.issued" not in types and record.grant is None
                    expired_event = next(e for e in events if e.type == "request.expired")
                    assert expired_event.ts >= record.expires_at
                else:
                    assert types.count("grant.issued") == 1
        finally:
            store.close()
        # every answer was an acceptance or a clear refusal: nothing 5xx, nothing unexplained
        allowed = {(200, "ok"), (409, "request_expired"), (409, "not_pending")}
        assert set(answers) <= allowed, answers
        assert sum(answers.values()) == REQUESTS * len(REVIEWERS)
        print(f"outcomes {dict(outcomes)}; answers {dict(answers)}")
    finally:
        http.close()
        server.stop()
