"""Topic names, claim patterns, and a subscriber's cursor: no I/O."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ackwire.wire.cursor import Drop, Emit, ReadFirst, TopicCursor
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


def test_the_cursor_emits_in_order_and_asks_for_what_is_missing() -> None:
    cursor = TopicCursor(after=10)  # a snapshot at seq 10
    assert cursor.offer(8, previous=5) == Drop()  # covered by the snapshot
    assert cursor.offer(12, previous=10) == Emit()
    assert cursor.offer(12, previous=10) == Drop()  # seen
    assert cursor.offer(20, previous=15) == ReadFirst(after=12)  # 15 is missing
    assert cursor.offer(15, previous=12) == Emit()
    assert cursor.offer(20, previous=15) == Emit()


def test_without_a_snapshot_the_first_event_starts_the_stream() -> None:
    cursor = TopicCursor(after=None)
    assert cursor.offer(40, previous=39) == Emit()
    assert cursor.offer(41, previous=40) == Emit()
    cursor.skip_to(45)
    assert cursor.offer(47, previous=46) == ReadFirst(after=45)
