"""The Python SDK: put a human checkpoint in front of any function, block of code or command.

    from keyturn import Gate, Denied

    gate = Gate()  # KEYTURN_URL, KEYTURN_API_KEY

    @gate.guard("db.export", resource=lambda table, **_: f"postgres://prod/{table}")
    def export_table(table: str, rows: int) -> str: ...

See docs/sdk.md.
"""

from keyturn.sdk._core import Approval, AsyncApproval
from keyturn.sdk.aio import AsyncGate
from keyturn.sdk.errors import (
    ApprovalTimeout,
    ConfigurationError,
    Denied,
    GrantRefused,
    KeyturnError,
    NotRunnable,
    ParamsMismatch,
    ServerError,
    Unreachable,
    UnserializableArguments,
)
from keyturn.sdk.gate import Gate

__all__ = [
    "Approval",
    "ApprovalTimeout",
    "AsyncApproval",
    "AsyncGate",
    "ConfigurationError",
    "Denied",
    "Gate",
    "GrantRefused",
    "KeyturnError",
    "NotRunnable",
    "ParamsMismatch",
    "ServerError",
    "Unreachable",
    "UnserializableArguments",
]
