"""A job's life, with no I/O: a record, an input, a transition table, actions out.

Everything that changes a job's state lives in this file. Each job's
`JobRecord` is kept on the bus (KV, written by compare-and-set), and whoever
has news of the job feeds the ledger with it and the current time: the node
that asks to start an attempt, reports its progress, keeps it alive, or ends
it; the scheduler's timer; the receipt of the job's terminal delivery. The
writer then stores the new record and, only if that write won, carries out
the actions. Because the record is the whole state, any node or scheduler
replica can take the next input for any job.

Rules (docs/protocol.md, Jobs):

- a node runs an attempt only once the ledger granted it (`RunHandler`): never
  for a job that ended, never for an attempt older than the newest one heard of;
- no attempt starts within the pending timeout: `no_capacity`;
- a node silent past the job timeout (no progress, no keep-alive, no result)
  is presumed dead for that job: it runs again elsewhere (JetStream redelivers
  its work), up to the attempt limit, then `failed`; a handler that raised is a
  failed attempt;
- the newest attempt wins: anything from an older attempt is dropped;
- a terminal state is final: nothing (no timer, no late result) changes it, so
  a timeout can never fire for a job whose result is recorded. Its receipt
  (the client acked the terminal delivery, or it expired undelivered) is only
  noted on the record;
- the record keeps the terminal delivery it decided on, and the job's message
  (its work and its timer) is withdrawn only after that delivery is stored. The
  writer may stop in between: the timer, or the same input again, then asks
  for the same delivery again (the store dedupes it by its id) and the
  withdrawal. Any other input meeting a terminal job is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue

from ackwire.settings import Settings


class JobState(enum.StrEnum):
    PENDING = "pending"
    """Stored, waiting for a node to start an attempt."""
    RUNNING = "running"
    """An attempt is running on a node that was heard from lately."""
    DONE = "done"
    FAILED = "failed"
    NO_CAPACITY = "no_capacity"

    @property
    def terminal(self) -> bool:
        return self in {JobState.DONE, JobState.FAILED, JobState.NO_CAPACITY}


# -- actions -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliverResult:
    data: JsonValue


@dataclass(frozen=True, slots=True)
class DeliverProgress:
    attempt: int
    percent: float


@dataclass(frozen=True, slots=True)
class DeliverError:
    code: Literal["no_capacity", "failed"]
    message: str


@dataclass(frozen=True, slots=True)
class CheckAt:
    """Fire `TimerFired` for this job at `at`, or later."""

    at: float


@dataclass(frozen=True, slots=True)
class RunHandler:
    """The node that asked may run the attempt's handler."""


@dataclass(frozen=True, slots=True)
class WithdrawJob:
    """Delete the job's message (`seq` of the jobs stream): no node gets its work again,
    and its timer ends (a message gone already is fine)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to do; `reason` is for the log (a superseded attempt, a duplicate…)."""

    reason: str


JobAction = (
    DeliverResult | DeliverProgress | DeliverError | CheckAt | RunHandler | WithdrawJob | Ignore
)


class JobRecord(BaseModel):
    """Everything the ledger knows of one job (stored as the job's KV value)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    session_id: str
    user: str | None = None
    kind: str
    trace_id: str
    traceparent: str | None = None
    """The trace context of the job's submit: its later spans are children of it."""
    job_seq: int
    """The job's message in the jobs stream (its work and its timer)."""
    submitted_at: float | None = None
    """When the gateway stored the job (`None` in a record an older version wrote: a
    rolling update reads those too)."""
    state: JobState = JobState.PENDING
    attempt: int = 0
    """The newest attempt heard of (JetStream's delivery count of the work message)."""
    node: str | None = None
    waiting_since: float
    """When the job last started waiting for a node (submitted, or its attempt was lost)."""
    last_heard_at: float | None = None
    ended_with: DeliverResult | DeliverError | None = None
    """The terminal delivery, once the job is terminal."""
    receipt: Literal["delivered", "expired"] | None = None
    """What became of the terminal delivery: acked by the client, or expired unacked."""


# -- inputs --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """A node got `attempt` of the job's work and asks to run it."""

    attempt: int
    node: str


@dataclass(frozen=True, slots=True)
class Progressed:
    attempt: int
    percent: float


@dataclass(frozen=True, slots=True)
class KeptAlive:
    """The node running the attempt says it still runs."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Succeeded:
    attempt: int
    data: JsonValue


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """The handler raised (or the node gave the job up); `message` says why."""

    attempt: int
    message: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The job's supervision timer: check the pending and job timeouts."""


@dataclass(frozen=True, slots=True)
class ResultReceipted:
    """The receipt of the job's terminal delivery (its result or error)."""

    outcome: Literal["delivered", "expired"]


AttemptInput = Started | Progressed | KeptAlive | Succeeded | AttemptFailed
JobInput = AttemptInput | TimerFired | ResultReceipted


@dataclass(frozen=True, slots=True)
class Outcome:
    record: JobRecord
    actions: tuple[JobAction, ...]


# -- the ledger ----------------------------------------------------------

# Each transition takes the one input type its rows pair it with.
Transition = Callable[["JobLedger", JobRecord, Any, float], Outcome]


class JobLedger:
    def __init__(self, *, pending_timeout: float, job_timeout: float, max_attempts: int) -> None:
        self.pending_timeout = pending_timeout
        self.job_timeout = job_timeout
        self.max_attempts = max_attempts

    @classmethod
    def from_settings(cls, settings: Settings) -> JobLedger:
        return cls(
            pending_timeout=settings.pending_timeout_s,
            job_timeout=settings.job_timeout_s,
            max_attempts=settings.max_attempts,
        )

    def submitted(
        self,
        *,
        job_id: str,
        session_id: str,
        user: str | None = None,
        kind: str,
        trace_id: str,
        job_seq: int,
        at: float,
        traceparent: str | None = None,
    ) -> JobRecord:
        """The record of a job stored at `at` that nothing happened to yet (it is written
        only once something did: most jobs' first write is their start)."""
        return JobRecord(
            job_id=job_id,
            session_id=session_id,
            user=user,
            kind=kind,
            trace_id=trace_id,
            traceparent=traceparent,
            job_seq=job_seq,
            submitted_at=at,
            waiting_since=at,
        )

    def apply(self, record: JobRecord, event: JobInput, now: float) -> Outcome:
        """The record after `event`, and what to do about it."""
        transition = _TRANSITIONS.get((record.state, type(event)))
        if transition is None:
            return Outcome(record, (Ignore(f"job already {record.state.value}"),))
        if isinstance(event, AttemptInput) and event.attempt < record.attempt:
            return Outcome(record, (Ignore(f"superseded attempt {event.attempt}"),))
        return transition(self, record, event, now)

    # The transitions; `apply` has already dropped inputs of older attempts.

    def _started(self, record: JobRecord, event: Started, now: float) -> Outcome:
        running = _heard_from(record, event.attempt, now).model_copy(update={"node": event.node})
        return Outcome(running, (RunHandler(),))

    def _progressed(self, record: JobRecord, event: Progressed, now: float) -> Outcome:
        running = _heard_from(record, event.attempt, now)
        return Outcome(running, (DeliverProgress(event.attempt, event.percent),))

    def _kept_alive(self, record: JobRecord, event: KeptAlive, now: float) -> Outcome:
        return Outcome(_heard_from(record, event.attempt, now), ())

    def _succeeded(self, record: JobRecord, event: Succeeded, now: float) -> Outcome:
        done = record.model_copy(update={"attempt": event.attempt, "last_heard_at": now})
        return _ended(done, JobState.DONE, DeliverResult(event.data))

    def _attempt_failed(self, record: JobRecord, event: AttemptFailed, now: float) -> Outcome:
        if event.attempt >= self.max_attempts:
            failed = record.model_copy(update={"attempt": event.attempt})
            return _ended(failed, JobState.FAILED, DeliverError("failed", event.message))
        waiting = record.model_copy(
            update={"state": JobState.PENDING, "attempt": event.attempt, "waiting_since": now}
        )
        return Outcome(waiting, (CheckAt(self.pending_deadline(now)),))

    def pending_deadline(self, waiting_since: float) -> float:
        """When a job waiting for a node since then is `no_capacity` (or its lost attempt
        `failed`) if none starts it: a job's earliest timeout."""
        return waiting_since + self.pending_timeout

    def _pending_timer(self, record: JobRecord, _event: TimerFired, now: float) -> Outcome:
        deadline = self.pending_deadline(record.waiting_since)
        if now < deadline:
            return Outcome(record, (CheckAt(deadline),))
        if record.attempt == 0:
            message = f"no node took a {record.kind!r} job within {self.pending_timeout:g} s"
            return _ended(record, JobState.NO_CAPACITY, DeliverError("no_capacity", message))
        message = f"attempt {record.attempt} was lost and no node took the job again"
        return _ended(record, JobState.FAILED, DeliverError("failed", message))

    def _running_timer(self, record: JobRecord, _event: TimerFired, now: float) -> Outcome:
        heard = record.last_heard_at if record.last_heard_at is not None else record.waiting_since
        deadline = heard + self.job_timeout
        if now < deadline:
            return Outcome(record, (CheckAt(deadline),))
        if record.attempt >= self.max_attempts:
            message = f"node {record.node} went silent on the last attempt ({record.attempt})"
            return _ended(record, JobState.FAILED, DeliverError("failed", message))
        # JetStream redelivers the work message to another node; wait for it to start.
        waiting = record.model_copy(update={"state": JobState.PENDING, "waiting_since": now})
        return Outcome(waiting, (CheckAt(self.pending_deadline(now)),))

    def _receipted(self, record: JobRecord, event: ResultReceipted, _now: float) -> Outcome:
        if record.receipt is not None:
            return Outcome(record, (Ignore(f"receipt already {record.receipt}"),))
        return Outcome(record.model_copy(update={"receipt": event.outcome}), ())

    # A terminal job meeting its timer, or the input that ended it, again (see the rules).

    def _result_again(self, record: JobRecord, event: Succeeded, _now: float) -> Outcome:
        ended_by_it = record.ended_with == DeliverResult(event.data)
        return _again(record, ended_by_it and event.attempt == record.attempt)

    def _failure_again(self, record: JobRecord, event: AttemptFailed, _now: float) -> Outcome:
        ended_by_it = record.ended_with == DeliverError("failed", event.message)
        return _again(record, ended_by_it and event.attempt == record.attempt)

    def _timer_again(self, record: JobRecord, _event: TimerFired, _now: float) -> Outcome:
        if record.receipt is not None:  # delivered or expired: only the message is left
            return Outcome(record, (WithdrawJob(record.job_seq),))
        return _again(record, True)


def _heard_from(record: JobRecord, attempt: int, now: float) -> JobRecord:
    """The record once `attempt` was heard to run (it may have been thought lost)."""
    return record.model_copy(
        update={"state": JobState.RUNNING, "attempt": attempt, "last_heard_at": now}
    )


def _ended(record: JobRecord, state: JobState, delivery: DeliverResult | DeliverError) -> Outcome:
    """The job ends with `delivery`; its message is withdrawn once that is stored."""
    ended = record.model_copy(update={"state": state, "ended_with": delivery})
    return Outcome(ended, (delivery, WithdrawJob(ended.job_seq)))


def _again(record: JobRecord, ended_by_it: bool) -> Outcome:
    """The terminal delivery and the withdrawal again, if the input `ended_by_it` (or is the
    job's timer) and the client's receipt does not show them done already."""
    if not ended_by_it or record.receipt is not None or record.ended_with is None:
        return Outcome(record, (Ignore(f"job already {record.state.value}"),))
    return Outcome(record, (record.ended_with, WithdrawJob(record.job_seq)))


_P, _R = JobState.PENDING, JobState.RUNNING
_DONE, _FAILED, _NO_CAPACITY = JobState.DONE, JobState.FAILED, JobState.NO_CAPACITY

#: (state, input) -> transition. A pair that is not here changes nothing: the input
#: is ignored, and the log says why.
_TRANSITIONS: dict[tuple[JobState, type[JobInput]], Transition] = {
    (_P, Started): JobLedger._started,
    (_R, Started): JobLedger._started,
    (_P, Progressed): JobLedger._progressed,
    (_R, Progressed): JobLedger._progressed,
    (_P, KeptAlive): JobLedger._kept_alive,
    (_R, KeptAlive): JobLedger._kept_alive,
    (_P, Succeeded): JobLedger._succeeded,
    (_R, Succeeded): JobLedger._succeeded,
    (_P, AttemptFailed): JobLedger._attempt_failed,
    (_R, AttemptFailed): JobLedger._attempt_failed,
    (_P, TimerFired): JobLedger._pending_timer,
    (_R, TimerFired): JobLedger._running_timer,
    (_DONE, Succeeded): JobLedger._result_again,
    (_FAILED, AttemptFailed): JobLedger._failure_again,
    **{(state, TimerFired): JobLedger._timer_again for state in JobState if state.terminal},
    **{(state, ResultReceipted): JobLedger._receipted for state in JobState if state.terminal},
}
