"""Redaction of secrets before anything leaves the workflow (guarantee 9).

Two sources of secrets: the paths a route names in `redact` (``params.connection_string``), and values that
look like credentials wherever they appear. A redacted value is replaced by a marker carrying the SHA-256 of
its canonical JSON, so the ledger can still prove which value was used without revealing it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from keyturn.model import canonical_json

REDACTED_KEY = "redacted"

# Key names that carry credentials whatever the route says.
# Matched against the snake_cased key as a whole word between separators, so `api_token` and `apiKey`
# are secrets while `max_tokens` is not.
_SECRET_KEY_NAMES = re.compile(
    r"(^|_)(pass(word|wd|phrase)?|secret|client_secret|token|api_key|access_key|private_key|credentials?|"
    r"authorization|auth_header|cookie|session_id|connection_string|dsn)($|_)"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY_NAMES.search(_CAMEL.sub("_", key).replace("-", "_").lower()))


# Values that look like credentials, wherever they appear.
_SECRET_VALUE_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
        r"\bxox[abposr]-[0-9A-Za-z-]{10,}",  # Slack tokens
        r"\bgh[pousr]_[0-9A-Za-z]{30,}",  # GitHub tokens
        r"\bsk-[A-Za-z0-9_-]{20,}",  # OpenAI/Anthropic-style secret keys
        r"\bkt[u]?_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{20,}",  # keyturn's own API keys and user tokens
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
        r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@",  # URLs with user:password@
    )
)


def value_digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def marker(value: Any) -> dict[str, str]:
    return {REDACTED_KEY: value_digest(value)}


def looks_like_secret(value: Any) -> bool:
    return isinstance(value, str) and any(p.search(value) for p in _SECRET_VALUE_PATTERNS)


def _split(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split(".") if part)


def redact_document(document: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `document` with every named path and every credential-looking value redacted.

    `paths` are dotted from the document root (``params.connection_string``, ``context.db.password``);
    a path that does not exist is ignored, a path that names a subtree redacts the whole subtree.
    """
    named = {_split(p) for p in paths}
    result = _walk(document, (), named)
    assert isinstance(result, dict)
    return result


def _walk(value: Any, here: tuple[str, ...], named: set[tuple[str, ...]]) -> Any:
    if here in named:
        return marker(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, child in value.items():
            path = (*here, str(key))
            if path not in named and is_secret_key(str(key)) and not _is_empty(child):
                out[key] = marker(child)
            else:
                out[key] = _walk(child, path, named)
        return out
    if isinstance(value, list):
        return [_walk(child, (*here, str(i)), named) for i, child in enumerate(value)]
    if looks_like_secret(value):
        return marker(value)
    return value


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def redact_params(params: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """Redact a params object given route paths that are rooted at ``params.``."""
    inner = [p.removeprefix("params.") for p in paths if p.startswith("params.")]
    return redact_document(params, inner)
