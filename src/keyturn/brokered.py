"""Brokered secrets: values the server hands an executor with the grant of a rule that names them.

The agent never holds them; the executor receives them once, in the consume answer. Values come from the
environment or a file named in the server configuration (`secrets:`), read when they are handed over, so
a rotated secret needs no restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from keyturn.config import SecretSettings
from keyturn.errors import Unavailable


def resolve(configured: Mapping[str, SecretSettings], names: Iterable[str]) -> dict[str, str]:
    """The value of each named secret, or `Unavailable` saying which one has none."""
    values: dict[str, str] = {}
    for name in names:
        spec = configured.get(name)
        if spec is None:
            raise Unavailable(f"the policy grants secret {name!r}, which the server does not configure")
        if spec.env is not None:
            value = os.environ.get(spec.env)
        elif spec.file is not None:
            try:
                value = spec.file.read_text(encoding="utf-8").rstrip("\n")
            except OSError as exc:
                raise Unavailable(f"secret {name!r} cannot be read from {spec.file}: {exc.strerror}") from exc
        else:
            value = None
        if value is None:
            raise Unavailable(f"secret {name!r} is configured but has no value")
        values[name] = value
    return values


def unresolved(configured: Mapping[str, SecretSettings]) -> list[str]:
    """What is wrong with each configured secret that has no value now (said at start, not at consume)."""
    problems = []
    for name in configured:
        try:
            resolve(configured, (name,))
        except Unavailable as exc:
            problems.append(exc.message)
    return problems


def scrub(detail: str, handed_over: Mapping[str, str]) -> str:
    """Remove the exact values handed over from a result detail an executor echoed them into (pattern
    redaction may not recognise them)."""
    for name, value in handed_over.items():
        if value:
            detail = detail.replace(value, f"[secret {name}]")
    return detail
