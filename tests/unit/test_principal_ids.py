"""One human counts once: one canonical form of a principal id, and every workflow comparison made on it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from keyturn import workflow
from keyturn.model import (
    ActionRequest,
    Decision,
    Principal,
    PrincipalKind,
    RequestRecord,
    Requirement,
    Review,
    ReviewDecision,
    Route,
    Status,
    Verdict,
    canonical_principal_id,
    same_identity,
)

T0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
AGENT = Principal(id="agent:deploy-bot", kind=PrincipalKind.AGENT)


def fw(text: str) -> str:
    """Fullwidth forms of ASCII letters (NFKC maps them back): fw("alice") looks like, and is, alice."""
    return "".join(chr(ord(c) + 0xFEE0) if "a" <= c <= "z" else c for c in text)


def human(principal_id: str, *groups: str) -> Principal:
    return Principal(id=principal_id, kind=PrincipalKind.HUMAN, groups=frozenset(groups))


def pending(
    count: int = 2, *, requester: Principal = AGENT, on_behalf_of: str | None = None
) -> workflow.Transition:
    route = Route(requirements=(Requirement(groups=("sre",), count=count),), ttl=timedelta(hours=1))
    request = ActionRequest(action="db.export", requester=requester, on_behalf_of=on_behalf_of)
    verdict = Verdict(decision=Decision.REVIEW, route=route, policy_revision="r")
    return workflow.submit("req_1", request, verdict, T0, "gr_1")


def approve(record: RequestRecord, who: Principal, minutes: int = 1) -> workflow.Transition:
    return workflow.review(
        record,
        who,
        ReviewDecision.APPROVE,
        "ok",
        T0 + timedelta(minutes=minutes),
        grant_id=f"gr_{minutes}",
    )


# --- the canonical form -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("user:alice@example.com", "user:alice@example.com"),
        ("user:Alice@Example.COM", "user:alice@example.com"),
        ("USER:alice@example.com", "user:alice@example.com"),
        ("  user:alice@example.com\n", "user:alice@example.com"),
        (fw("user") + ":" + fw("alice") + "@example.com", "user:alice@example.com"),  # fullwidth (NFKC)
        ("user:STRASSE@example.com", "user:strasse@example.com"),
        ("user:straße@example.com", "user:strasse@example.com"),  # full case folding, not lower()
        ("user:ﬁona@example.com", "user:fiona@example.com"),  # the ligature ﬁ is f + i
        ("user:bob@xn--bcher-kva.example", "user:bob@bücher.example"),  # A-label and U-label: one domain
        ("user:bob@BÜCHER.example", "user:bob@bücher.example"),
        ("agent:Deploy-Bot", "agent:deploy-bot"),
        ("agent:repo:Acme/App:ref:refs/heads/main", "agent:repo:acme/app:ref:refs/heads/main"),
    ],
)
def test_one_canonical_form(raw: str, canonical: str) -> None:
    assert canonical_principal_id(raw) == canonical
    assert canonical_principal_id(canonical) == canonical  # idempotent
    assert same_identity(raw, canonical)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("alice@example.com", "KIND:NAME"),
        ("user:", "KIND:NAME"),
        (":alice", "KIND:NAME"),
        ("us er:alice", "kind"),
        ("user:alice\u200b@example.com", "U+200B"),  # zero-width space: looks like alice, is not
        ("user:alice\u00a0smith@example.com", "U+0020"),  # NFKC makes the no-break space a space
        ("user:ali ce@example.com", "U+0020"),
        ("user:alice\x00@example.com", "U+0000"),
        ("user:alice\u202e@example.com", "U+202E"),  # right-to-left override
        ("user:alice@example.com.", "domain"),
        ("user:alice@@example.com", "one @"),
        ("user:a@b@example.com", "one @"),
        ("user:@example.com", "local part"),
        ("user:alice@", "domain"),
        ("user:bob@xn--zz-.example", "domain"),
        ("user:" + "a" * 400, "longer"),
    ],
)
def test_ambiguous_ids_are_refused(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        canonical_principal_id(raw)


def test_principals_and_stored_values_hold_the_canonical_form() -> None:
    """Whatever builds a principal (an authenticator, a chat link to come, a stored record read back), the
    id it holds is canonical, so that even an exact comparison compares canonical forms."""
    assert human("user:Alice@Example.com").id == "user:alice@example.com"
    record = pending(1, on_behalf_of="User:OLIVIA@example.com").record
    assert record.request.on_behalf_of == "user:olivia@example.com"
    read_back = type(record).model_validate_json(
        record.model_dump_json().replace("user:olivia@example.com", "User:Olivia@Example.com")
    )
    assert read_back.request.on_behalf_of == "user:olivia@example.com"


# --- every comparison of the workflow -----------------------------------------------------------------


def test_quorum_counts_one_human_once_whatever_the_spelling() -> None:
    """The attack of issue #13: alice from the users file, then alice through OIDC, met "2 from sre"."""
    record = pending(2).record
    record = approve(record, human("user:Alice@Example.com", "sre")).record
    with pytest.raises(workflow.AlreadyReviewed):
        approve(record, human("user:alice@example.com", "sre"), minutes=2)
    with pytest.raises(workflow.AlreadyReviewed):
        approve(record, human("user:" + fw("alice") + "@EXAMPLE.com", "sre"), minutes=2)
    assert record.status is Status.PENDING
    approved = approve(record, human("user:bob@example.com", "sre"), minutes=3).record
    assert approved.status is Status.APPROVED


def test_quorum_of_a_stored_record_with_two_spellings_counts_them_once() -> None:
    """Records written before the fix may hold two spellings of one human: the matching folds them."""
    record = pending(2).record
    record = approve(record, human("user:alice@example.com", "sre")).record
    first = record.reviews[0]
    # the state the old code could reach (built without validation, as it was stored then)
    second = Review.model_construct(**{**dict(first), "reviewer": "user:ALICE@Example.com"})
    stored = record.model_copy(update={"reviews": (first, second)})
    assert workflow.outstanding(stored) == ["1 from sre"]
    problems = workflow.invariant_violations(stored)
    assert "one human reviewed the same params twice" in problems
    with pytest.raises(workflow.AlreadyReviewed):
        approve(stored, human("user:Alice@example.com", "sre"), minutes=2)


def test_self_review_whatever_the_spelling() -> None:
    requester = human("user:Sam@Example.com", "sre")
    record = pending(1, requester=requester).record
    with pytest.raises(workflow.SelfReview):
        approve(record, human("user:" + fw("sam") + "@example.com", "sre"))


def test_on_behalf_of_in_odd_case_and_width() -> None:
    for spelling in (
        "User:OLIVIA@example.com",
        "user:" + fw("olivia") + "@example.com",
        " user:olivia@example.com ",
    ):
        record = pending(1, on_behalf_of=spelling).record
        with pytest.raises(workflow.OnBehalfOfCannotApprove):
            approve(record, human("user:olivia@example.com", "sre"))


def test_cancel_and_report_by_the_requester_under_another_spelling() -> None:
    requester = Principal(id="agent:Deploy-Bot", kind=PrincipalKind.AGENT)
    record = pending(1, requester=requester).record
    same = Principal(id="agent:deploy-bot", kind=PrincipalKind.AGENT)
    assert workflow.cancel(record, same, T0 + timedelta(minutes=1)).record.status is Status.CANCELLED
