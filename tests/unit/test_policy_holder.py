"""`PolicyHolder`: a reload swaps in a policy only if it loads; `changed()` follows the files' bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyturn.policy import PolicyError, PolicyHolder

GOOD = (
    "version: 1\ndefaults: {approvers: [sre]}\nrules:\n"
    "  - {name: reads, match: {action: '*.read'}, decision: allow}\n"
)
OTHER = GOOD + "  - {name: writes, match: {action: '*.write'}, decision: deny, reason: 'not here'}\n"
BROKEN = GOOD + "  - {name: bad, match: {action: x}, decision: perhaps}\n"


def test_a_good_edit_is_loaded_and_a_broken_one_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD, encoding="utf-8")
    holder = PolicyHolder([path])
    first = holder.current.revision
    assert not holder.changed()

    path.write_text(OTHER, encoding="utf-8")
    assert holder.changed()
    second = holder.reload().revision
    assert second != first and holder.current.revision == second and holder.last_error is None
    assert not holder.changed()

    path.write_text(BROKEN, encoding="utf-8")
    assert holder.changed()
    with pytest.raises(PolicyError) as caught:
        holder.reload()
    assert "policy.yaml:5" in str(caught.value)
    assert holder.current.revision == second  # still the last good policy
    assert holder.last_error is caught.value
    assert not holder.changed()  # one broken edit is tried (and reported) once, not at every poll

    path.unlink()
    assert holder.changed()  # a missing file is a change too …
    with pytest.raises(PolicyError):
        holder.reload()
    assert holder.current.revision == second  # … and it never takes the policy away
