"""What an operator (or a load balancer, or Prometheus) asks a running server: readiness, the policy
revision in use, the public keys (JWKS) and the pending-queue gauges. Transport-free, like the service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from keyturn import metrics
from keyturn.policy import PolicyHolder
from keyturn.signing_keys import KeyRing
from keyturn.store import Store


class Operations:
    def __init__(
        self,
        store: Store,
        policy: PolicyHolder,
        keyring: KeyRing,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._policy = policy
        self._keyring = keyring
        self._clock = clock

    def public_keys(self) -> dict[str, Any]:
        """The public keys (JWKS) of grants and ledger checkpoints: current and still-verifying ones."""
        return self._keyring.jwks()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        problems = []
        try:
            self._store.ping()
        except Exception as exc:  # readiness must answer, whatever the database does
            problems.append(f"database: {exc.__class__.__name__}")
        policy = self._policy
        body: dict[str, Any] = {
            "status": "ready" if not problems else "not ready",
            "problems": problems,
            "policy_revision": policy.current.revision,
            "policy_loaded_at": datetime.fromtimestamp(policy.loaded_at, UTC).isoformat(timespec="seconds"),
            "keys": self._keyring.storage,
        }
        if policy.last_error is not None:
            # The last edit did not load: the revision above is the last good one, still in use.
            body["policy_reload_error"] = [str(p) for p in policy.last_error.problems]
        return not problems, body

    def refresh_metrics(self) -> None:
        """Set the pending-queue gauges (one aggregate query per scrape)."""
        by_tier, oldest = self._store.pending_summary()
        age = max(0.0, (self._clock() - oldest).total_seconds()) if oldest is not None else 0.0
        metrics.set_pending(by_tier, age)
