"""What travels on the bus about jobs: the job as a gateway stored it."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from nats.aio.msg import Msg
from pydantic import AfterValidator, Field, JsonValue

from ackwire.bus import subjects
from ackwire.bus.models import BusModel, utc_now
from ackwire.wire.tracecontext import usable_or_none

#: A job's one terminal delivery (kind `result` or `error`) has the id `<job_id>:result`.
TERMINAL_SUFFIX = ":result"

#: A job id as `new_job_id` makes them: a job naming anything else is unreadable (and
#: refused), never a key the ledger's bucket would reject on every redelivery.
JobId = Annotated[str, AfterValidator(subjects.job_token)]


def new_job_id(session_id: str, idempotency_key: str | None) -> str:
    """A job id; the same for the same idempotency key in the same session, for ever."""
    if idempotency_key is None:
        return "j-" + secrets.token_urlsafe(16)
    digest = hashlib.sha256(f"{session_id}\0{idempotency_key}".encode()).hexdigest()
    return "j-" + digest[:32]


class JobSubmitted(BusModel):
    """A job as the gateway stored it: what nodes run, and what its timer supervises."""

    job_id: JobId
    session_id: str
    user: str
    kind: str
    payload: dict[str, JsonValue]
    trace_id: str
    submitted_at: datetime = Field(default_factory=utc_now)


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A job and where the store keeps it (`seq` in the jobs stream)."""

    job: JobSubmitted
    seq: int
    traceparent: str | None = None
    """The gateway's span of the submit, from the message's `traceparent` header."""

    @classmethod
    def of(cls, job: JobSubmitted, msg: Msg) -> StoredJob:
        """The job read from `msg`, its message in the jobs stream, as a consumer got it."""
        return cls.at(job, msg.metadata.sequence.stream, msg.headers)

    @classmethod
    def at(cls, job: JobSubmitted, seq: int, headers: dict[str, str] | None) -> StoredJob:
        """The job read from message `seq` of the jobs stream, with its `headers`."""
        return cls(job, seq, usable_or_none((headers or {}).get("traceparent")))
