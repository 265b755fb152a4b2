"""keyturn: the human checkpoint between what an AI agent intends to do and the moment it does it."""

__version__ = "0.1.0"

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
