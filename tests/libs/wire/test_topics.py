"""Topic names and claim patterns: no I/O."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ackwire.wire.topics import BadTopicError, allowed, pattern_matches, topic_name


@pytest.mark.parametrize("topic", ["a", "pipeline.42", "chat.room-1.user_2", ".".join("t" * 16)])
def test_topic_names(topic: str) -> None:
    assert topic_name(topic) == topic


@pytest.mark.parametrize(
    "text", ["", "a..b", ".a", "a.", "a.*", ">", "a b", "a.é", "x" * 65, ".".join("t" * 17)]
)
def test_not_topic_names(text: str) -> None:
    with pytest.raises(BadTopicError):
        topic_name(text)


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        (">", "a", True),
        ("*.b", "a.b", True),
        ("a.>.c", "a.b.c", False),  # `>` only last
        ("a.b c", "a.b c", False),  # a malformed pattern matches nothing
    ],
)
def test_patterns_match_as_nats_subjects_do(pattern: str, topic: str, matches: bool) -> None:
    assert pattern_matches(pattern, topic) is matches


_tokens = st.lists(st.from_regex(r"[a-z0-9]{1,3}", fullmatch=True), min_size=1, max_size=4)


@given(topic=_tokens, claim=_tokens)
def test_an_exact_claim_allows_exactly_its_topic(topic: list[str], claim: list[str]) -> None:
    assert allowed((".".join(claim),), ".".join(topic)) is (topic == claim)
