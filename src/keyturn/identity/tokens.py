"""Opaque bearer tokens of keyturn: `kt_<id>_<secret>` (agent API keys) and `ktu_<id>_<secret>` (user tokens).

`<id>` is 8 random alphanumerics that name the token (it is stored, listed and revoked by it); `<secret>` is
256 random bits, base64url. Only `sha256:<hex>` of the whole token is stored. A fast hash is the right tool
here, unlike for passwords: the secret is 256 bits of randomness, so there is nothing to guess and nothing a
slow hash would protect, while every API call has to verify one. Hashing the whole token binds the id to the
secret. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

_ID_ALPHABET = string.ascii_letters + string.digits
API_KEY_PREFIX = "kt"
USER_TOKEN_PREFIX = "ktu"
# Matches redact.py's credential pattern, so a leaked token is redacted from notifications and the ledger.
_TOKEN = re.compile(r"^(kt|ktu)_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{32,128})$")


def new_token(prefix: str) -> tuple[str, str]:
    """A fresh `(token_id, plaintext)`; token_id is `<prefix>_<8 chars>`, the start of the plaintext."""
    token_id = f"{prefix}_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
    return token_id, f"{token_id}_{secrets.token_urlsafe(32)}"


def parse_token(plaintext: str) -> tuple[str, str] | None:
    """`(prefix, token_id)` of a well-formed token, or None."""
    match = _TOKEN.match(plaintext)
    if match is None:
        return None
    return match.group(1), f"{match.group(1)}_{match.group(2)}"


def hash_token(plaintext: str) -> str:
    return "sha256:" + hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def token_matches(plaintext: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(plaintext).encode("ascii"), stored_hash.encode("utf-8", "replace"))
