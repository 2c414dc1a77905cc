"""What travels on the bus about jobs: the stored job, and what nodes report of attempts."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, JsonValue

from ackwire.bus import subjects
from ackwire.bus.models import BusModel, utc_now

#: A job's one terminal delivery (kind `result` or `error`) has the id `<job_id>:result`.
TERMINAL_SUFFIX = ":result"

#: A job id as `new_job_id` makes them: a report naming anything else is unreadable (and
#: refused), never a key the ledger's bucket would reject on every redelivery.
JobId = Annotated[str, AfterValidator(subjects.job_token)]


def new_job_id(session_id: str, idempotency_key: str | None) -> str:
    """A job id; the same for the same idempotency key in the same session, for ever."""
    if idempotency_key is None:
        return "j-" + secrets.token_urlsafe(16)
    digest = hashlib.sha256(f"{session_id}\0{idempotency_key}".encode()).hexdigest()
    return "j-" + digest[:32]


class JobSubmitted(BusModel):
    """A job as the gateway stored it (and as nodes receive it as work)."""

    job_id: JobId
    session_id: str
    user: str
    kind: str
    payload: dict[str, JsonValue]
    trace_id: str
    submitted_at: datetime = Field(default_factory=utc_now)


class _Reported(BusModel):
    job_id: JobId
    attempt: int
    node: str
    trace_id: str


class AttemptStarted(_Reported):
    event: Literal["started"] = "started"


class AttemptProgressed(_Reported):
    event: Literal["progress"] = "progress"
    percent: Annotated[float, Field(ge=0, le=100)]


class AttemptAlive(_Reported):
    """The attempt still runs (sent when it reported nothing else for a while)."""

    event: Literal["alive"] = "alive"


class AttemptSucceeded(_Reported):
    event: Literal["succeeded"] = "succeeded"
    data: JsonValue


class AttemptFailedEvent(_Reported):
    event: Literal["failed"] = "failed"
    message: str


JobEvent = Annotated[
    AttemptStarted | AttemptProgressed | AttemptAlive | AttemptSucceeded | AttemptFailedEvent,
    Field(discriminator="event"),
]
