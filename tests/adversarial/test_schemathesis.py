"""Property-based fuzzing of the whole REST API from its own /openapi.json (schemathesis 4).

A real `keyturn serve` on loopback; every generated request is sent with an agent's key, a human approver's
token and (for the ledger) an auditor's token. Whatever the body, query or path, the server must answer
with a JSON error or a success — never a 5xx. The number of examples per operation is bounded so the whole
run stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, GenerationMode
from schemathesis.core.result import Ok

from support.live import LiveServer, start_server

EXAMPLES = 8  # per operation and generation mode (positive, negative)
IDENTITIES = ("agent:deploy-bot", "user:sam@example.com")
AUDITOR = "user:erin@example.com"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("fuzz"))
    try:
        yield server
    finally:
        server.stop()


def check(case: schemathesis.Case[Any], live: LiveServer, session: requests.Session) -> None:
    identities = (*IDENTITIES, AUDITOR) if case.path.startswith("/v1/ledger") else IDENTITIES
    for who in identities:
        response = case.call(base_url=live.url, session=session, headers=live.headers(who), timeout=30)
        assert response.status_code < 500, (
            f"{case.as_curl_command()} -> {response.status_code}: {response.text[:500]}\n"
            f"server log:\n{live.log()[-3000:]}"
        )
        if response.status_code >= 400:
            body = response.json()
            assert set(body["error"]) == {"code", "message", "detail"}, body


def test_no_server_errors(live: LiveServer) -> None:
    # The schemathesis pytest plugin (`from_fixture`) does not run under pytest 9, so the operations are
    # driven with hypothesis directly: same strategies, same generated cases.
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"/openapi.json has an invalid operation: {result}"
        operations.append(result.ok())
    assert len(operations) >= 13, [op.label for op in operations]
    tried: list[str] = []
    with requests.Session() as session:
        with live.client(IDENTITIES[0]) as agent:
            # a real pending request, so generated reviews, cancels and results reach the workflow
            real_id = agent.submit("db.export", "postgres://prod/customers", {"rows": 5})["id"]
        plans: list[tuple[APIOperation[Any, Any, Any, Any], GenerationMode, dict[str, str] | None]] = []
        for operation in operations:
            plans.append((operation, GenerationMode.POSITIVE, None))
            plans.append((operation, GenerationMode.NEGATIVE, None))
            if "{request_id}" in operation.path and not operation.path.endswith(("/wait", "/events")):
                plans.append((operation, GenerationMode.POSITIVE, {"request_id": real_id}))
        for operation, mode, path_parameters in plans:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case[Any]) -> None:
                check(case, live, session)

            try:
                run()
            except Unsatisfiable:
                # nothing to make invalid (no parameters, no body): only positive cases exist
                assert mode is GenerationMode.NEGATIVE, operation.label
            tried.append(f"{operation.label} ({mode.value})")
    assert len(tried) >= 2 * 13
