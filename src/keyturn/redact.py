"""Redaction of secrets before anything leaves the workflow (guarantee 9).

Two sources of secrets: the paths a route names in `redact` (``params.connection_string``), and values that
look like credentials wherever they appear. A redacted value is replaced by a marker carrying a *keyed*
digest of its canonical JSON (RFC 8785)::

    {"redacted": "hmac-sha256:<kid>:<hex>"}     HMAC-SHA256 under the server's redaction key <kid>

so the ledger can still prove which value was used without revealing it, and someone holding only the
ledger cannot confirm a guess of a low-entropy secret (a PIN, an SSN) by hashing candidates: that needs the
key, which the server holds and an auditor may be given (`keyturn ledger check-value`). A `Redactor` with no
key writes the older, unkeyed ``sha256:<hex>`` form; the server always passes its keyed one.

Credential-looking values are found by one RE2 scan (google-re2: a linear-time automaton, no backtracking),
so the cost is linear in the text whatever it holds: Python's `re` backtracks, and the old URL pattern took
seconds on a 40 KB run of letters (benchmarks/redact_bench.py). Key *names* (`db_password`, `apiKey`) are
matched with `re` on purpose: the pattern is a fixed alternation between separators (no nested quantifier,
linear) and needs look-around for camelCase, which RE2 does not have.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from keyturn.model import canonical_json

REDACTED_KEY = "redacted"
PLAIN_PREFIX = "sha256:"
KEYED_PREFIX = "hmac-sha256:"

# Key names that carry credentials whatever the route says.
# Matched against the snake_cased key as a whole word between separators, so `api_token` and `apiKey`
# are secrets while `max_tokens` is not.
_SECRET_KEY_NAMES = re.compile(
    r"(^|_)(pass(word|wd|phrase)?|pwd|secret|client_secret|token|api_key|access_key|private_key|credentials?|"
    r"authorization|auth_header|cookie|session_id|connection_string|dsn)($|_)"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    # Cached: documents repeat the same few key names, and each is checked by every redaction pass
    # (three ledger events and the view per submit) with two regular expressions.
    return bool(_SECRET_KEY_NAMES.search(_CAMEL.sub("_", key).replace("-", "_").lower()))


# Values that look like credentials, wherever they appear. RE2 syntax (no look-around, no backreferences).
# Each entry: (what it finds, pattern). Formats are the issuers' documented ones; tests/support/credentials.py
# is the corpus they are measured on, near-misses included.
_ASSIGNED_NAMES = (
    r"password|passwd|passphrase|pwd|secret|secret[_-]?key|client[_-]?secret|api[_-]?key|apikey|"
    r"access[_-]?key|secret[_-]?access[_-]?key|auth[_-]?token|access[_-]?token|refresh[_-]?token|token|"
    r"private[_-]?key|account[_-]?key|shared[_-]?access[_-]?key|credentials?"
)
SECRET_VALUE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("private key (PEM, OpenSSH, PGP)", r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"),
    ("AWS access key id", r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[0-9A-Z]{16}\b"),
    # `password=…` (libpq, JDBC `&password=`, ADO.NET `Password=…;`, ODBC `PWD=`), `AWS_SECRET_ACCESS_KEY=…`,
    # `"api_key": "…"`: a secret-named key, then `=` or `:`, then a value. The name may carry a prefix
    # (`DB_PASSWORD`) but not a path before it (`/etc/passwd: …` is a file name, not an assignment).
    (
        "secret assigned to a secret-named key",
        r"(?i)(?:^|[^a-z0-9_./-])[a-z0-9_.-]*?(?:" + _ASSIGNED_NAMES + r")[\"']?[ \t]*[:=][ \t]*"
        r"[\"'{]?[^\s\"'&;,{}/\[<]",  # not a placeholder: [redacted], [secret X], <password>
    ),
    (
        "Authorization header",
        r"(?i)\b(?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*[\"']?[a-z0-9-]+ +[^\s\"']{6,}",
    ),
    ("bearer token", r"\bBearer +[A-Za-z0-9._~+/-]{20,}"),
    ("URL with user:password@", r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:[^/\s@]+@"),
    ("GitHub token", r"\b(?:gh[pousr]_[0-9A-Za-z]{30,}|github_pat_[0-9A-Za-z_]{22,})"),
    ("GitLab token", r"\bglpat-[0-9A-Za-z_-]{20,}"),
    ("Slack token", r"\bxox[abposre]-[0-9A-Za-z-]{10,}"),
    ("Slack webhook URL", r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{20,}"),
    ("Stripe key", r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}|\bwhsec_[0-9A-Za-z]{20,}"),
    ("Google API key", r"\bAIza[0-9A-Za-z_-]{35}"),
    ("Google OAuth token or client secret", r"\bya29\.[0-9A-Za-z_-]{20,}|\bGOCSPX-[0-9A-Za-z_-]{20,}"),
    ("OpenAI/Anthropic-style secret key", r"\bsk-[A-Za-z0-9_-]{20,}"),
    ("npm or PyPI token", r"\bnpm_[A-Za-z0-9]{36}|\bpypi-AgE[A-Za-z0-9_-]{50,}"),
    ("SendGrid key", r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),
    ("keyturn API key or user token", r"\bktu?_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{20,}"),
    ("JWT", r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 64 << 20  # the DFA's cache; past it RE2 falls back to its (still linear) NFA
# One automaton for all patterns: the text is scanned once, whatever the number of formats.
_ANY_SECRET = re2.compile("|".join(f"(?:{p})" for _, p in SECRET_VALUE_PATTERNS), options=_RE2_OPTIONS)


def looks_like_secret(value: Any) -> bool:
    return isinstance(value, str) and _ANY_SECRET.search(value) is not None


def secret_kinds(text: str) -> list[str]:
    """Which formats `text` contains (for tests and the benchmark's coverage report; not on the hot path)."""
    return [name for name, pattern in SECRET_VALUE_PATTERNS if re2.search(pattern, text) is not None]


def mask(text: str, replacement: str = "[redacted]") -> str:
    """`text` with each credential-looking span replaced, the rest kept: for a short string that must stay
    a string and stay readable (a grant's resource claim). A span runs to the end of its token."""
    out: list[str] = []
    at = 0
    for match in _ANY_SECRET.finditer(text):
        start, end = match.span()
        if start < at:
            continue
        if not (text[start].isalnum() or text[start] in "_./-"):
            start += 1  # the separator before a `password=` (`&`, `;`, a space) is not the secret
        scheme = text.find("://", start, end)
        if text.startswith("-----BEGIN", start):
            # a key block: through its END line (or the end of the text, if cut short)
            close = text.find("-----END", end)
            close = text.find("-----", close + 8) if close != -1 else -1
            end = close + 5 if close != -1 else len(text)
        elif scheme != -1 and text[end - 1] == "@":
            start, end = scheme + 3, end - 1  # a URL's user:password, keeping scheme and host readable
        else:
            while end < len(text) and not text[end].isspace() and text[end] not in "&;,\"'":
                end += 1
        out.append(text[at:start])
        out.append(replacement)
        at = end
    out.append(text[at:])
    return "".join(out)


# --- digests --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedactionKey:
    """An HMAC-SHA256 key for the digests of redacted values. `kid` names it in every marker it made."""

    kid: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class Redactor:
    """Redacts documents, writing markers with digests keyed by `key` (unkeyed SHA-256 when None).

    `keys` holds every key whose digests can still be checked (the current one and retired ones), so a
    digest made before a rotation still matches (a grant's resource digest, an auditor's check).
    A value, passed to the pure workflow explicitly: no I/O, no global state.
    """

    key: RedactionKey | None = None
    keys: Mapping[str, RedactionKey] = field(default_factory=dict)

    def digest(self, value: Any) -> str:
        if self.key is None:
            return PLAIN_PREFIX + hashlib.sha256(canonical_json(value)).hexdigest()
        return keyed_digest(self.key, value)

    def marker(self, value: Any) -> dict[str, str]:
        return {REDACTED_KEY: self.digest(value)}

    def matches(self, digest: str, value: Any) -> bool:
        """Whether `digest` (keyed with any key this redactor knows, or plain) is the digest of `value`."""
        known = dict(self.keys)
        if self.key is not None:
            known.setdefault(self.key.kid, self.key)
        return check_digest(digest, value, known)

    def document(self, document: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
        """A copy of `document` with every named path and every credential-looking value redacted.

        `paths` are dotted from the document root (``params.connection_string``, ``context.db.password``);
        a path that does not exist is ignored, a path that names a subtree redacts the whole subtree.
        Call it once on the raw document: redacting a redacted document would digest the markers.
        """
        named = {_split(p) for p in paths}
        # One RE2 scan of all the document's strings, joined by newlines, instead of one per string (the
        # wrapper's per-call cost dominated a submit's redaction). The same answer: every pattern that
        # matches inside one string also matches in the joined text, a newline before it counting as the
        # start or separator the pattern accepts. Only when the joined text holds something are the
        # strings scanned one by one, to find which.
        strings: list[str] = []
        _collect_strings(document, strings)
        scan = _ANY_SECRET.search("\n".join(strings)) is not None
        result = self._walk(document, (), named, scan)
        assert isinstance(result, dict)
        return result

    def _walk(self, value: Any, here: tuple[str, ...], named: set[tuple[str, ...]], scan: bool) -> Any:
        if here in named:
            return self.marker(value)
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, child in value.items():
                path = (*here, str(key))
                if path not in named and is_secret_key(str(key)) and not _is_empty(child):
                    out[key] = self.marker(child)
                else:
                    out[key] = self._walk(child, path, named, scan)
            return out
        if isinstance(value, list):
            return [self._walk(child, (*here, str(i)), named, scan) for i, child in enumerate(value)]
        if scan and looks_like_secret(value):
            return self.marker(value)
        return value


UNKEYED = Redactor()


def keyed_digest(key: RedactionKey, value: Any) -> str:
    mac = hmac.new(key.secret, canonical_json(value), hashlib.sha256).hexdigest()
    return f"{KEYED_PREFIX}{key.kid}:{mac}"


def digest_kid(digest: str) -> str | None:
    """The key id a keyed digest names; None for an unkeyed one (or anything else)."""
    if not digest.startswith(KEYED_PREFIX):
        return None
    kid, _, _ = digest.removeprefix(KEYED_PREFIX).partition(":")
    return kid


def check_digest(digest: str, value: Any, keys: Mapping[str, RedactionKey]) -> bool:
    """Whether `digest` is the digest of `value`. A keyed digest needs its key in `keys` (else False)."""
    if digest.startswith(PLAIN_PREFIX):
        expected = PLAIN_PREFIX + hashlib.sha256(canonical_json(value)).hexdigest()
        return hmac.compare_digest(digest, expected)
    kid = digest_kid(digest)
    if kid is None or kid not in keys:
        return False
    return hmac.compare_digest(digest, keyed_digest(keys[kid], value))


# --- the unkeyed helpers (tests, tools that hold no key) -------------------------------------------------


def value_digest(value: Any) -> str:
    return UNKEYED.digest(value)


def marker(value: Any) -> dict[str, str]:
    return UNKEYED.marker(value)


def redact_document(
    document: Mapping[str, Any], paths: Iterable[str], redactor: Redactor = UNKEYED
) -> dict[str, Any]:
    return redactor.document(document, paths)


def redact_params(
    params: Mapping[str, Any], paths: Iterable[str], redactor: Redactor = UNKEYED
) -> dict[str, Any]:
    """Redact a params object given route paths that are rooted at ``params.``."""
    inner = [p.removeprefix("params.") for p in paths if p.startswith("params.")]
    return redactor.document(params, inner)


def _split(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split(".") if part)


def _collect_strings(value: Any, into: list[str]) -> None:
    if isinstance(value, str):
        into.append(value)
    elif isinstance(value, Mapping):
        for child in value.values():
            _collect_strings(child, into)
    elif isinstance(value, list):
        for child in value:
            _collect_strings(child, into)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []
