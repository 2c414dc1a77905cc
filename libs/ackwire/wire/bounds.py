"""How large a frame to a client can grow, known before the message is stored.

A client accepts frames up to `max_frame_bytes` (announced in `welcome`). A message
stored for a session whose `deliver` frame is larger could never be delivered: each
attempt would close the connection, and the resumed session would get it again.
Producers therefore refuse such a message when they store it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import JsonValue

from ackwire.wire.codec import encode
from ackwire.wire.frames import Deliver, Event

#: The largest `seq` a frame can carry: a JetStream stream sequence is a uint64.
MAX_SEQ = 2**64 - 1


class FrameTooLargeError(ValueError):
    """A message or event whose frame would be larger than clients accept."""


def refuse_oversized_deliver(
    max_frame_bytes: int,
    *,
    delivery_id: str,
    kind: Literal["result", "error", "progress", "message"],
    data: JsonValue,
    job_id: str | None = None,
) -> None:
    """Raise `FrameTooLargeError` unless every `deliver` frame of this message fits."""
    # The longest form: the largest seq, and `"redelivered":false` (longer than true).
    frame = Deliver(
        seq=MAX_SEQ, id=delivery_id, kind=kind, job_id=job_id, data=data, redelivered=False
    )
    _refuse_oversized(frame, max_frame_bytes, what=f"the {kind}")


def refuse_oversized_event(max_frame_bytes: int, *, topic: str, data: JsonValue) -> None:
    """Raise `FrameTooLargeError` unless every `event` frame of this event fits."""
    frame = Event(topic=topic, seq=MAX_SEQ, data=data, snapshot=False)
    _refuse_oversized(frame, max_frame_bytes, what="the event")


def _refuse_oversized(frame: Deliver | Event, max_frame_bytes: int, *, what: str) -> None:
    size = len(encode(frame).encode())
    if size > max_frame_bytes:
        raise FrameTooLargeError(
            f"{what} is too large: its {frame.type} frame would be {size} bytes; clients "
            f"accept at most {max_frame_bytes} (max_frame_bytes)"
        )
