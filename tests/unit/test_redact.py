"""Redaction (guarantee 9) as a unit: named paths, credential-looking key names and values, everywhere."""

from __future__ import annotations

import pytest

from keyturn.redact import is_secret_key, looks_like_secret, redact_document, value_digest

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...\n-----END RSA PRIVATE KEY-----"
AWS = "AKIAIOSFODNN7EXAMPLE"
SLACK = "xoxb-123456789012-abcdefghijkl"
GITHUB = "ghp_" + "a" * 36
OPENAI = "sk-" + "A" * 32
KEYTURN = "kt_AbCd1234_" + "x" * 32
URL = "postgres://admin:Sup3rS3cret@db.internal/prod"


@pytest.mark.parametrize("secret", [JWT, PEM, AWS, SLACK, GITHUB, OPENAI, KEYTURN, URL])
def test_credential_looking_values_are_redacted_wherever_they_appear(secret: str) -> None:
    document = {"params": {"note": secret, "list": ["ok", secret], "deep": {"x": secret}}, "resource": secret}
    redacted = redact_document(document, ())
    assert secret not in str(redacted)
    assert redacted["params"]["list"][0] == "ok"
    assert redacted["resource"] == {"redacted": value_digest(secret)}


@pytest.mark.parametrize(
    "key", ["password", "db_password", "apiKey", "api_key", "token", "client_secret", "Authorization", "dsn"]
)
def test_keys_named_like_credentials_are_redacted(key: str) -> None:
    assert is_secret_key(key)
    redacted = redact_document({"params": {key: "plain-looking", "rows": 5}}, ())
    assert redacted["params"][key] == {"redacted": value_digest("plain-looking")}
    assert redacted["params"]["rows"] == 5


@pytest.mark.parametrize("key", ["max_tokens", "rows", "tokenizer", "passage", "keys"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)
    assert redact_document({key: "visible"}, ()) == {key: "visible"}


def test_named_paths_hide_whole_subtrees_and_missing_paths_are_ignored() -> None:
    document = {
        "params": {"customer": {"ssn": "078-05-1120", "name": "Ann"}, "rows": 3},
        "justification": "x",
    }
    redacted = redact_document(document, ("params.customer", "params.absent", "justification"))
    assert redacted["params"]["customer"] == {"redacted": value_digest({"ssn": "078-05-1120", "name": "Ann"})}
    assert redacted["justification"] == {"redacted": value_digest("x")}
    assert redacted["params"]["rows"] == 3


def test_plain_text_is_not_mistaken_for_a_secret() -> None:
    for text in ("quarterly report", "https://example.com/path", "sk-short", "eyJ", "AKIA123"):
        assert not looks_like_secret(text)
