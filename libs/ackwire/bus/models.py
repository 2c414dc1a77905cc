"""Messages and records on the bus, as pydantic models (never bare dicts)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue


def utc_now() -> datetime:
    return datetime.now(UTC)


class BusModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class GatewayRecord(BusModel):
    """A gateway's lease: alive while refreshed. A restarted gateway of the same name
    is a new `incarnation`, so it never passes for the one that held older sessions."""

    name: str
    incarnation: str
    url: str
    pid: int
    started_at: datetime = Field(default_factory=utc_now)


class NodeRegistration(BusModel):
    """A node announcing itself; refreshed every heartbeat, gone when it stops refreshing."""

    name: str
    kinds: list[str]
    schemas: dict[str, dict[str, JsonValue]] = Field(default_factory=dict)
    """Each kind's payload JSON schema, for gateways to check a payload before storing it."""
    capacity: Annotated[int, Field(ge=1)]
    pid: int
    started_at: datetime = Field(default_factory=utc_now)


class Delivery(BusModel):
    """A message owed to a session, as stored in its queue until the client acks it."""

    id: str
    """Stable across redeliveries (the client dedupes on it); also the store's dedupe id."""
    kind: Literal["result", "error", "progress", "message"]
    session_id: str
    data: JsonValue
    user: str | None = None
    """Whom the session belongs to, when the producer knows (for operators' views)."""
    receipt_to: str | None = None
    """The producer that wants a receipt when this is delivered or expires undelivered."""
    job_id: str | None = None
    trace_id: str | None = None
    traceparent: str | None = None
    """The trace context its producer stored it under (the gateway's span is its child)."""
    created_at: datetime = Field(default_factory=utc_now)


class TopicEventBody(BusModel):
    """A topic event as stored; its seq is its stream sequence."""

    data: JsonValue
    published_at: datetime = Field(default_factory=utc_now)


class TopicSnapshot(BusModel):
    """A topic's latest snapshot: the event that became it, and where it sits."""

    seq: int
    """The event's seq: the snapshot reflects every event up to it, and no later one."""
    data: JsonValue
    published_at: datetime = Field(default_factory=utc_now)


class Receipt(BusModel):
    """What became of a message a producer asked a receipt for."""

    message_id: str
    session_id: str
    user: str | None
    seq: int
    outcome: Literal["delivered", "expired"]
    """`delivered`: the client acked it and the store confirmed; `expired`: it was never
    acked, and its retention ended."""
    at: datetime = Field(default_factory=utc_now)


class PresenceChange(BusModel):
    """An event on a presence topic: a session of a user joined or left (a connection
    began or ended), or a gateway went away without goodbye (all it held is offline)."""

    change: Literal["join", "leave", "gateway_gone"]
    gateway: str
    user: str | None = None
    session_id: str | None = None
