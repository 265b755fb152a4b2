"""Policy as code: load and validate YAML policies, compile their CEL conditions, evaluate, explain, test.

`PolicyHolder` keeps the policy a running server uses: a reload swaps in a new policy only if it loads,
so a broken edit never takes the last good policy away. `changed()` says, cheaply (a digest of the files'
bytes), whether the files differ from what was last read, so a server can poll them (and reload on SIGHUP).
"""

from __future__ import annotations

import hashlib
import threading
import time
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
        self._seen = files_digest(self.paths)  # taken first: an edit made during the load shows next time
        self._current = load_policy(self.paths, targets=targets)
        self.loaded_at = time.time()
        self.last_error: PolicyError | None = None

    @property
    def current(self) -> CompiledPolicy:
        return self._current

    def changed(self) -> bool:
        """Whether the files' bytes differ from the last ones loaded or tried (a failed try counts, so one
        broken edit is reported once, not at every poll)."""
        return files_digest(self.paths) != self._seen

    def reload(self) -> CompiledPolicy:
        """Load the files again; on failure raise `PolicyError` and keep serving the last good policy."""
        with self._lock:
            self._seen = files_digest(self.paths)
            try:
                policy = load_policy(self.paths, targets=self.targets)
            except PolicyError as exc:
                self.last_error = exc
                raise
            self._current = policy  # a single reference swap: readers see the old or the new policy
            self.loaded_at = time.time()
            self.last_error = None
            return policy


def files_digest(paths: Sequence[Path]) -> str:
    """SHA-256 over the files' bytes (a missing or unreadable file counts as its own state)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            data = f"\0unreadable {exc.errno}".encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()
