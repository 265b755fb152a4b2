"""keyturn: the human checkpoint between what an AI agent intends to do and the moment it does it.

The SDK's names (`Gate`, `Denied`, ...) are importable from here, but loaded on first use: the server,
the policy engine and `keyturn.workflow` must not pay for (or depend on) the SDK's HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
    "__version__",
]

if TYPE_CHECKING:
    from keyturn.sdk import (
        Approval,
        ApprovalTimeout,
        AsyncApproval,
        AsyncGate,
        ConfigurationError,
        Denied,
        Gate,
        GrantRefused,
        KeyturnError,
        NotRunnable,
        ParamsMismatch,
        ServerError,
        Unreachable,
        UnserializableArguments,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        import keyturn.sdk

        return getattr(keyturn.sdk, name)
    raise AttributeError(f"module 'keyturn' has no attribute {name!r}")
