"""Redaction (guarantee 9) as a unit: named paths, credential-looking key names and values, everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keyturn import redact as redact_module
from keyturn.redact import (
    UNKEYED,
    RedactionKey,
    Redactor,
    check_digest,
    digest_kid,
    is_secret_key,
    looks_like_secret,
    mask,
    redact_document,
    secret_kinds,
    value_digest,
)
from keyturn.signing_keys import DirectoryKeyRing as KeyRing
from support.credentials import NEAR_MISSES, SECRETS

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


# --- the corpus: every real format found, no near-miss hidden (tests/support/credentials.py) -------------


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_every_credential_format_of_the_corpus_is_found(name: str) -> None:
    text, secret = SECRETS[name]
    assert looks_like_secret(text), name
    assert secret not in mask(text)
    redacted = redact_document({"params": {"note": f"before {text} after"}}, ())
    assert secret not in str(redacted)


@pytest.mark.parametrize("name", sorted(NEAR_MISSES))
def test_near_misses_are_not_mistaken_for_secrets(name: str) -> None:
    text = NEAR_MISSES[name]
    assert not looks_like_secret(text), (name, secret_kinds(text))
    assert mask(text) == text


def test_mask_keeps_what_binds_nothing_readable() -> None:
    assert mask("postgres://admin:Sup3rS3cret@db.internal/prod") == "postgres://[redacted]@db.internal/prod"
    assert (
        mask("jdbc:postgresql://db/prod?user=admin&password=Sup3r&ssl=true")
        == "jdbc:postgresql://db/prod?user=admin&[redacted]&ssl=true"
    )
    assert (
        mask("key -----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- ok")
        == "key [redacted] ok"
    )


def test_adversarial_input_is_scanned_whole() -> None:
    """The inputs that made the old pattern backtrack are answered (cost: benchmarks/redact_bench.py), and a
    secret after a megabyte of them is still found."""
    for filler in ("a" * 1_000_000, "a:" * 500_000, "@:" * 500_000, "a://b:" * 150_000):
        assert not looks_like_secret(filler)
        assert looks_like_secret(filler + " AKIAIOSFODNN7EXAMPLE")


# --- keyed digests ----------------------------------------------------------------------------------------

KEY = RedactionKey(kid="k1AbCdEfGhIjKlMn", secret=b"\x01" * 32)
OTHER = RedactionKey(kid="k2AbCdEfGhIjKlMn", secret=b"\x02" * 32)


def test_a_keyed_marker_names_its_key_and_is_not_the_plain_sha256() -> None:
    keyed = Redactor(key=KEY)
    digest = keyed.digest("4821")
    assert digest.startswith(f"hmac-sha256:{KEY.kid}:") and digest_kid(digest) == KEY.kid
    assert digest.removeprefix(f"hmac-sha256:{KEY.kid}:") not in value_digest("4821")
    # a guess cannot be confirmed without the key: no PIN's plain digest, nor another key's, matches
    assert not any(UNKEYED.matches(digest, f"{pin:04d}") for pin in range(10_000))
    assert not check_digest(digest, "4821", {OTHER.kid: OTHER})
    assert check_digest(digest, "4821", {KEY.kid: KEY}) and not check_digest(digest, "4822", {KEY.kid: KEY})
    assert redact_document({"password": "4821"}, (), keyed) == {"password": {"redacted": digest}}


def test_a_forged_kid_or_a_downgraded_digest_does_not_match() -> None:
    digest = Redactor(key=KEY).digest("4821")
    forged = digest.replace(KEY.kid, OTHER.kid)
    assert not check_digest(forged, "4821", {KEY.kid: KEY, OTHER.kid: OTHER})
    assert not check_digest(digest[:-1] + ("0" if digest[-1] != "0" else "1"), "4821", {KEY.kid: KEY})
    assert not check_digest("hmac-sha256:nonsense", "4821", {KEY.kid: KEY})


def test_rotation_keeps_old_digests_checkable(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    before = ring.redactor().digest("4821")
    first = ring.redaction_key()
    second = ring.rotate_redaction_key()
    assert second.kid != first.kid and ring.redaction_key() == second
    after = ring.redactor()
    assert after.digest("4821") != before and digest_kid(after.digest("4821")) == second.kid
    assert after.matches(before, "4821")  # made before the rotation, still checkable
    assert KeyRing(tmp_path / "keys").redaction_key() == second  # another process sees the same key
    assert ring.purposes() == ["grant", "ledger"] and all(k["kid"] != first.kid for k in ring.jwks()["keys"])
    assert oct((tmp_path / "keys" / "redaction" / f"{second.kid}.key").stat().st_mode & 0o777) == "0o600"


def test_a_route_named_value_is_digested_once_in_the_ledger_as_in_the_view() -> None:
    """Issue #13: the ledger stored the digest of the marker (redacted twice) for `redact: [params.x]`."""
    from datetime import UTC, datetime, timedelta

    from keyturn import workflow
    from keyturn.model import (
        ActionRequest,
        Decision,
        Principal,
        PrincipalKind,
        Requirement,
        ReviewDecision,
        Route,
        Verdict,
    )
    from keyturn.views import request_view

    now = datetime(2030, 1, 7, 9, tzinfo=UTC)
    route = Route(
        requirements=(Requirement(groups=("sre",)),),
        ttl=timedelta(hours=1),
        editable=("params.rows",),
        redact=("params.connection_string",),
    )
    dsn = "host=db user=admin dbname=prod"
    request = ActionRequest(
        action="db.export",
        params={"rows": 5, "connection_string": dsn},
        requester=Principal(id="agent:bot", kind=PrincipalKind.AGENT),
    )
    verdict = Verdict(decision=Decision.REVIEW, route=route)
    keyed = Redactor(key=KEY)
    submitted = workflow.submit("req_1", request, verdict, now, "gr_1", redactor=keyed)
    expected = keyed.digest(dsn)
    assert submitted.events[0].payload["params"]["connection_string"] == {"redacted": expected}
    view = request_view(submitted.record, base_url="http://kt", redactor=keyed)
    assert view["params"]["connection_string"] == {"redacted": expected}
    alice = Principal(id="user:alice@example.com", kind=PrincipalKind.HUMAN, groups=frozenset({"sre"}))
    edited = workflow.review(
        submitted.record,
        alice,
        ReviewDecision.APPROVE,
        "fewer",
        now,
        edited_params={"rows": 1, "connection_string": dsn},
        reevaluate=lambda _: verdict,
        grant_id="gr_2",
        redactor=keyed,
    )
    change = next(e for e in edited.events if e.type.value == "request.params_edited").payload
    assert (
        change["before"]["connection_string"]
        == change["after"]["connection_string"]
        == {"redacted": expected}
    )


class _CountingPattern:
    """Wraps the redactor's RE2 automaton and counts the scans made with it."""

    def __init__(self, pattern: Any) -> None:
        self.pattern = pattern
        self.searches = 0

    def search(self, text: str) -> Any:
        self.searches += 1
        return self.pattern.search(text)

    def finditer(self, text: str) -> Any:
        return self.pattern.finditer(text)


def _clean_view(strings: int) -> dict[str, Any]:
    return {
        "id": "req_0001",
        "params": {f"field_{i}": f"an ordinary value number {i}" for i in range(strings)},
        "context": {"tool": "Read", "lines": [1, 200]},
    }


def test_a_document_without_credentials_is_scanned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One RE2 scan of all strings joined, not one per string: the wrapper's per-call cost was most of a
    submit's redaction (issue #12)."""
    counting = _CountingPattern(redact_module._ANY_SECRET)
    monkeypatch.setattr(redact_module, "_ANY_SECRET", counting)
    document = _clean_view(40)
    assert UNKEYED.document(document, ()) == document
    assert counting.searches == 1


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_the_single_scan_finds_what_scanning_each_string_finds(name: str) -> None:
    """Among 40 clean strings, each credential format is still found, in its own string and only there;
    and every near-miss stays readable: the joined scan never changes which strings are redacted."""
    text, _ = SECRETS[name]
    document = _clean_view(40)
    document["params"]["field_17"] = text
    document["context"]["near_misses"] = sorted(NEAR_MISSES.values())
    redacted = UNKEYED.document(document, ())
    assert redacted["params"]["field_17"] == {"redacted": value_digest(text)}
    del redacted["params"]["field_17"], document["params"]["field_17"]
    assert redacted == document
