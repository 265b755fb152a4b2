"""What an operator (or Prometheus) asks a running server beyond the service's readiness: the policy
revision in use and its last reload error, where the keys live, and the pending-queue gauges.
Transport-free, like the service."""

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

    def status(self) -> dict[str, Any]:
        """The policy revision in use (and why the last reload failed, if it did), and where keys live."""
        policy = self._policy
        body: dict[str, Any] = {
            "policy_revision": policy.current.revision,
            "policy_loaded_at": datetime.fromtimestamp(policy.loaded_at, UTC).isoformat(timespec="seconds"),
            "keys": self._keyring.storage,
        }
        if policy.last_error is not None:
            # The last edit did not load: the revision above is the last good one, still in use.
            body["policy_reload_error"] = [str(p) for p in policy.last_error.problems]
        return body

    def refresh_metrics(self) -> None:
        """Set the pending-queue gauges (one aggregate query per scrape)."""
        by_tier, oldest = self._store.pending_summary()
        age = max(0.0, (self._clock() - oldest).total_seconds()) if oldest is not None else 0.0
        metrics.set_pending(by_tier, age)
