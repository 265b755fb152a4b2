"""Policy as code: load and validate YAML policies, compile their CEL conditions, evaluate, explain, test.

`PolicyHolder` keeps the policy a running server uses: a reload swaps in a new policy only if it loads,
so a broken edit never takes the last good policy away.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from keyturn.policy.compiled import CompiledPolicy, Explanation, RuleExplanation
from keyturn.policy.compiler import load_policy, revision_of
from keyturn.policy.errors import PolicyError, Problem

__all__ = [
    "CompiledPolicy",
    "Explanation",
    "PolicyError",
    "PolicyHolder",
    "Problem",
    "RuleExplanation",
    "load_policy",
    "revision_of",
]


class PolicyHolder:
    """The current policy of a process. Loads at construction (raising `PolicyError` if it cannot)."""

    def __init__(self, paths: Sequence[Path], *, targets: frozenset[str] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.targets = targets  # the notify targets the configuration defines (None: not checked)
        self._lock = threading.Lock()
        self._current = load_policy(self.paths, targets=targets)

    @property
    def current(self) -> CompiledPolicy:
        return self._current

    def reload(self) -> CompiledPolicy:
        """Load the files again; on failure raise `PolicyError` and keep serving the last good policy."""
        with self._lock:
            policy = load_policy(self.paths, targets=self.targets)
            self._current = policy  # a single reference swap: readers see the old or the new policy
            return policy
