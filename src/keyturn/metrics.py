"""Prometheus metrics, served at `/metrics`. Names follow the Prometheus naming conventions."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("keyturn_requests_total", "Action requests submitted, by policy decision", ["decision"])
REVIEWS = Counter("keyturn_reviews_total", "Reviews accepted, by decision", ["decision"])
GRANTS = Counter("keyturn_grant_consumptions_total", "Grant consumption attempts, by outcome", ["outcome"])
TRANSITIONS = Counter("keyturn_timer_transitions_total", "Expiries and escalations applied by the timers")
POLICY_SECONDS = Histogram(
    "keyturn_policy_evaluation_seconds",
    "Time to evaluate policy on one request",
    buckets=(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2),
)
HTTP_ERRORS = Counter("keyturn_http_errors_total", "Error answers of the API, by code", ["code"])
POLICY_RELOADS = Counter("keyturn_policy_reloads_total", "Policy reloads, by outcome", ["outcome"])
POLICY_REVISION = Gauge(
    "keyturn_policy_revision_info",
    "The policy revision in use (as a label)",
    ["revision"],
)
PENDING = Gauge("keyturn_pending_requests", "Requests waiting for review, by risk tier", ["tier"])
OLDEST_PENDING = Gauge(
    "keyturn_oldest_pending_request_age_seconds", "Age of the oldest request waiting for review (0: none)"
)

_revision_lock = threading.Lock()


def set_policy_revision(revision: str) -> None:
    """One series: the revision in use now (the previous one's series is removed)."""
    with _revision_lock:
        POLICY_REVISION.clear()
        POLICY_REVISION.labels(revision).set(1)


def set_pending(by_tier: dict[str, int], oldest_age_seconds: float) -> None:
    """Set the pending gauges from one summary (`Store.pending_summary`): tiers with none drop out."""
    with _revision_lock:
        PENDING.clear()
        for tier, count in by_tier.items():
            PENDING.labels(tier).set(count)
        OLDEST_PENDING.set(oldest_age_seconds)


DELIVERIES = Counter(
    "keyturn_channel_deliveries_total",
    "Outbox delivery attempts, by channel (slack, teams, webhook) and outcome"
    " (delivered, retry, dead, cancelled)",
    ["channel", "outcome"],
)
OUTBOX_DUE = Gauge("keyturn_outbox_due_rows", "Outbox rows due for delivery now (not yet delivered)")
OUTBOX_OLDEST_DUE_AGE = Gauge(
    "keyturn_outbox_oldest_due_age_seconds", "How long the oldest undelivered due outbox row has been due"
)
