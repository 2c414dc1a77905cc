"""Every frame of the ackwire v1 client protocol, as pydantic models.

Frames are parsed strictly: a field of the wrong type is a bad frame, never
coerced (``"18"`` is not a ``seq``). Unknown fields are ignored so that newer
clients and gateways can add fields without breaking older peers.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator

from ackwire.wire.codes import ErrorCode
from ackwire.wire.tracecontext import usable_traceparent

SUBPROTOCOL = "ackwire.v1"

#: Bounds on client-chosen strings: nothing a client sends may grow without limit.
REF_MAX = 128
NAME_MAX = 256


class Frame(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


# -- client -> gateway -----------------------------------------------------


class ResumeRequest(Frame):
    session_id: Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
    resume_token: Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
    last_seq: Annotated[int, Field(ge=0)] | None = None


class ClientInfo(Frame):
    name: Annotated[str, Field(max_length=NAME_MAX)] | None = None
    version: Annotated[str, Field(max_length=NAME_MAX)] | None = None


#: A JWT is a few hundred bytes; this bounds what a client may make the gateway verify.
TOKEN_MAX = 8192


class Hello(Frame):
    type: Literal["hello"] = "hello"
    token: Annotated[str, Field(max_length=TOKEN_MAX)]
    resume: ResumeRequest | None = None
    client: ClientInfo | None = None


class Ack(Frame):
    """Acks one message (`seq`) or every message up to and including `upto`."""

    type: Literal["ack"] = "ack"
    seq: Annotated[int, Field(ge=1)] | None = None
    upto: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _exactly_one_position(self) -> Self:
        if (self.seq is None) == (self.upto is None):
            raise ValueError("an ack carries exactly one of `seq` and `upto`")
        return self


class Submit(Frame):
    type: Literal["submit"] = "submit"
    ref: Annotated[str, Field(min_length=1, max_length=REF_MAX)]
    kind: Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
    payload: dict[str, JsonValue]
    idempotency_key: Annotated[str, Field(min_length=1, max_length=NAME_MAX)] | None = None
    traceparent: Annotated[str, AfterValidator(usable_traceparent)] | None = None
    """(extension) The W3C trace context the job's trace continues."""


class Subscribe(Frame):
    type: Literal["subscribe"] = "subscribe"
    ref: Annotated[str, Field(min_length=1, max_length=REF_MAX)]
    topic: Annotated[str, Field(min_length=1, max_length=NAME_MAX)]


class Unsubscribe(Frame):
    type: Literal["unsubscribe"] = "unsubscribe"
    ref: Annotated[str, Field(min_length=1, max_length=REF_MAX)]
    topic: Annotated[str, Field(min_length=1, max_length=NAME_MAX)]


class Refresh(Frame):
    """A newer token for the same user, sent before the connection's token expires."""

    type: Literal["refresh"] = "refresh"
    ref: Annotated[str, Field(min_length=1, max_length=REF_MAX)]
    token: Annotated[str, Field(max_length=TOKEN_MAX)]


class Ping(Frame):
    type: Literal["ping"] = "ping"


class Bye(Frame):
    type: Literal["bye"] = "bye"


ClientFrame = Annotated[
    Hello | Ack | Submit | Subscribe | Unsubscribe | Refresh | Ping | Bye,
    Field(discriminator="type"),
]


# -- gateway -> client -----------------------------------------------------


class Welcome(Frame):
    type: Literal["welcome"] = "welcome"
    session_id: str
    resume_token: str
    resumed: bool
    reason: Literal["new", "expired", "unknown"] | None = None
    gateway: str
    heartbeat_s: float
    max_frame_bytes: int
    window: int


class Deliver(Frame):
    type: Literal["deliver"] = "deliver"
    seq: int
    id: str
    kind: Literal["result", "error", "progress", "message"]
    job_id: str | None = None
    data: JsonValue
    redelivered: bool = False
    trace_id: str | None = None
    """(extension) The job's trace id, on a job's deliveries."""


class Accepted(Frame):
    type: Literal["accepted"] = "accepted"
    ref: str
    job_id: str


class Subscribed(Frame):
    type: Literal["subscribed"] = "subscribed"
    ref: str
    topic: str


class Unsubscribed(Frame):
    type: Literal["unsubscribed"] = "unsubscribed"
    ref: str
    topic: str


class Refreshed(Frame):
    type: Literal["refreshed"] = "refreshed"
    ref: str
    exp: int
    """The new token's `exp`, in seconds since the epoch: the connection's new deadline."""


class Event(Frame):
    type: Literal["event"] = "event"
    topic: str
    seq: int
    data: JsonValue
    snapshot: bool = False


class Pong(Frame):
    type: Literal["pong"] = "pong"


class TopicGap(Frame):
    """(extension) The topic's events with `after < seq < before` that the store no longer
    holds: some may never reach the client."""

    after: int
    before: int


class Error(Frame):
    type: Literal["error"] = "error"
    ref: str | None = None
    code: ErrorCode
    message: str
    topic: str | None = None
    """The topic the error concerns, when it concerns one."""
    gap: TopicGap | None = None
    """With `topic_gap`: which events are lost."""


ServerFrame = Annotated[
    Welcome | Deliver | Accepted | Subscribed | Unsubscribed | Refreshed | Event | Pong | Error,
    Field(discriminator="type"),
]
