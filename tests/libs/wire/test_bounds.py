"""A message is refused when some `deliver` or `event` frame of it would exceed the limit."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ackwire.wire import encode
from ackwire.wire.bounds import (
    MAX_SEQ,
    FrameTooLargeError,
    refuse_oversized_deliver,
    refuse_oversized_event,
)
from ackwire.wire.frames import Deliver, Event

LIMIT = 1024


def _overhead_of_deliver(delivery_id: str) -> int:
    """The bytes of the longest `deliver` frame of `{"text": ""}`."""
    empty = Deliver(seq=MAX_SEQ, id=delivery_id, kind="message", data={"text": ""})
    return len(encode(empty).encode())


def test_a_message_up_to_the_limit_passes_and_one_byte_more_is_refused() -> None:
    room = LIMIT - _overhead_of_deliver("m-1")
    refuse_oversized_deliver(LIMIT, delivery_id="m-1", kind="message", data={"text": "x" * room})
    with pytest.raises(FrameTooLargeError) as refused:
        refuse_oversized_deliver(
            LIMIT, delivery_id="m-1", kind="message", data={"text": "x" * (room + 1)}
        )
    assert str(refused.value) == (
        f"the message is too large: its deliver frame would be {LIMIT + 1} bytes; "
        f"clients accept at most {LIMIT} (max_frame_bytes)"
    )


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    room = LIMIT - _overhead_of_deliver("m-1")
    with pytest.raises(FrameTooLargeError, match="the message is too large"):
        refuse_oversized_deliver(
            LIMIT, delivery_id="m-1", kind="message", data={"text": "é" * (room // 2 + 1)}
        )


def test_a_job_result_counts_its_job_id_and_says_it_is_the_result() -> None:
    room = LIMIT - _overhead_of_deliver("j-1:result")
    with pytest.raises(FrameTooLargeError, match="the result is too large"):
        refuse_oversized_deliver(  # fits without a job_id, not with one
            LIMIT, delivery_id="j-1:result", kind="result", job_id="j-1", data={"text": "x" * room}
        )


def test_an_event_up_to_the_limit_passes_and_one_byte_more_is_refused() -> None:
    empty = Event(topic="room.1", seq=MAX_SEQ, data={"text": ""})
    room = LIMIT - len(encode(empty).encode())
    refuse_oversized_event(LIMIT, topic="room.1", data={"text": "x" * room})
    with pytest.raises(FrameTooLargeError, match="the event is too large: its event frame"):
        refuse_oversized_event(LIMIT, topic="room.1", data={"text": "x" * (room + 1)})


@given(
    seq=st.integers(min_value=1, max_value=MAX_SEQ),
    redelivered=st.booleans(),
    snapshot=st.booleans(),
    text=st.text(max_size=600),
)
def test_no_real_frame_of_an_accepted_message_exceeds_the_limit(
    seq: int, redelivered: bool, snapshot: bool, text: str
) -> None:
    data = {"text": text}
    try:
        refuse_oversized_deliver(LIMIT, delivery_id="m-1", kind="message", data=data)
    except FrameTooLargeError:
        pass
    else:
        sent = Deliver(seq=seq, id="m-1", kind="message", data=data, redelivered=redelivered)
        assert len(encode(sent).encode()) <= LIMIT
    try:
        refuse_oversized_event(LIMIT, topic="room.1", data=data)
    except FrameTooLargeError:
        pass
    else:
        event = Event(topic="room.1", seq=seq, data=data, snapshot=snapshot)
        assert len(encode(event).encode()) <= LIMIT
