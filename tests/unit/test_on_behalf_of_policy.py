"""Policy can require a verified on-behalf-of: the CEL variable `on_behalf_of_verified`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from keyturn.model import ActionRequest, Decision, Principal, PrincipalKind
from keyturn.policy import load_policy
from keyturn.policy.cases import RequestSpec

POLICY = """\
defaults: {approvers: [security]}
rules:
  - name: acting for a human needs proof
    match: {action: "payroll.*"}
    when: "on_behalf_of != null && !on_behalf_of_verified"
    decision: deny
    reason: prove whom you act for
  - {name: payroll, match: {action: "payroll.*"}, decision: allow}
"""
AGENT = Principal(id="agent:bot", kind=PrincipalKind.AGENT)
NOW = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)


def test_on_behalf_of_verified_in_when(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    policy = load_policy([path])

    def decide(**fields: object) -> Decision:
        request = ActionRequest(action="payroll.run", requester=AGENT, **fields)  # type: ignore[arg-type]
        return policy.evaluate(request, NOW).decision

    assert decide() is Decision.ALLOW
    assert decide(on_behalf_of="user:olivia@example.com") is Decision.DENY
    assert decide(on_behalf_of="user:olivia@example.com", on_behalf_of_verified=True) is Decision.ALLOW
    # policy test cases and `keyturn policy explain` request files can say it too
    spec = RequestSpec.model_validate(
        {"action": "payroll.run", "on_behalf_of": "user:olivia@example.com", "on_behalf_of_verified": True}
    )
    assert policy.evaluate(spec.to_request(), NOW).decision is Decision.ALLOW
