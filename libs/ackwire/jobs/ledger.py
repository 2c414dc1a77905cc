"""A job's life, with no I/O: a record, an input, a transition table, actions out.

Everything that decides a job's state lives in this file. Each job's `JobRecord`
is kept on the bus (written by compare-and-set, `jobs/records.py`), and whoever
has news of the job feeds the ledger with it and the current time: the node
that asks to start an attempt or ends it, and the scheduler's timer. The writer
stores the new record and, only if that write won, carries out the actions.
Because the record is the whole state, any node or scheduler replica can take
the next input for any job.

Rules (docs/protocol.md, Jobs; docs/architecture.md, Jobs):

- a node runs an attempt only once the ledger granted it (`RunHandler`): never for
  a job that ended, never for a delivery of its work older than the newest granted.
  One exception: a young job's first delivery runs at once, and asks for its start
  after a quick time, or with its end if done by then (`StartedAndEnded`);
- attempts are the ledger's to count: a grant is an attempt. A delivery of the work
  that was never granted (its node could not reach the bus, or handed it back
  unstarted) spends none; a granted attempt whose node went silent (JetStream gives
  its work to another node after the job timeout) does;
- no attempt granted within the pending timeout of the submit: `no_capacity`;
- liveness has one clock, JetStream's: a running attempt's node keeps its work
  message alive (`in_progress`), and the ledger never fails a running job for
  silence. What it does watch is whether any node still serves the kind: a job
  whose attempt was lost, with no node left to take it again for the grace
  (`unserved_grace`), is `failed`;
- the newest attempt wins: anything from an older one is dropped;
- a terminal state is final: nothing (no timer, no late result) changes it, so a
  timeout can never fire for a job whose result is recorded;
- the record keeps the terminal delivery it decided on, and the job's work message
  (its work and its timer) is withdrawn only after that delivery is stored. The
  writer may stop in between: the timer, the work coming to a node again, or the
  same input again, then asks for the same delivery again (the store dedupes it by
  its id) and the withdrawal.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue

from ackwire.settings import Settings


class JobState(enum.StrEnum):
    PENDING = "pending"
    """Stored, waiting for a node to be granted an attempt (its first, or its next)."""
    RUNNING = "running"
    """An attempt was granted; its node keeps the work alive for JetStream."""
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

    attempt: int


@dataclass(frozen=True, slots=True)
class RetryLater:
    """The attempt failed with attempts left: hand the work back for the next one."""


@dataclass(frozen=True, slots=True)
class WithdrawJob:
    """Delete the job's work message (`seq` of the jobs stream): no node gets its work
    again, and its timer ends (a message gone already is fine)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to do; `reason` is for the log (a superseded attempt, a duplicate…)."""

    reason: str


JobAction = DeliverResult | DeliverError | CheckAt | RunHandler | RetryLater | WithdrawJob | Ignore


class JobRecord(BaseModel):
    """Everything the ledger knows of one job (stored as the job's record)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    session_id: str
    user: str | None = None
    kind: str
    trace_id: str
    traceparent: str | None = None
    """The trace context of the job's submit: its later spans are children of it."""
    job_seq: int
    """The job's work message in the jobs stream (its work and its timer)."""
    submitted_at: float
    """When the gateway stored the job."""
    state: JobState = JobState.PENDING
    attempt: int = 0
    """Attempts granted so far (the newest is the one running, or the one that ended)."""
    delivery: int = 0
    """JetStream's delivery count of the work for the newest granted attempt: a later
    delivery is a new attempt, an earlier one is superseded."""
    node: str | None = None
    waiting_since: float
    """When the job last started waiting for a node (submitted, or its attempt failed)."""
    unserved_since: float | None = None
    """Since when no node serves the job's kind, as the timer last saw (None: served)."""
    ended_with: DeliverResult | DeliverError | None = None
    """The terminal delivery, once the job is terminal."""


# -- inputs --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """A node got delivery `delivery` of the job's work and asks to run it."""

    delivery: int
    node: str


@dataclass(frozen=True, slots=True)
class Succeeded:
    attempt: int
    data: JsonValue


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """The handler raised; `message` says why."""

    attempt: int
    message: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The job's supervision timer; `served`: some node serves the job's kind now."""

    served: bool = True


AttemptEnd = Succeeded | AttemptFailed


@dataclass(frozen=True, slots=True)
class StartedAndEnded:
    """A node ran a first delivery before asking (its job young, its handler quick) and
    asks for the start and the end at once: one write instead of two. `end` counts as the
    end of whichever attempt the start is granted as (none granted: it is dropped)."""

    started: Started
    end: AttemptEnd


JobInput = Started | AttemptEnd | TimerFired | StartedAndEnded


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

    @property
    def unserved_grace(self) -> float:
        """How long a job whose attempt is running or lost waits for a node of its kind to
        be there again before it is `failed`: a dead node's work comes back after the job
        timeout, and must then be taken within the pending timeout."""
        return self.job_timeout + self.pending_timeout

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
        only once something did: most jobs' first write is their first attempt's start)."""
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

    def pending_deadline(self, waiting_since: float) -> float:
        """When a job nobody started since then is `no_capacity`: a job's earliest timeout."""
        return waiting_since + self.pending_timeout

    def apply(self, record: JobRecord, event: JobInput, now: float) -> Outcome:
        """The record after `event`, and what to do about it."""
        if isinstance(event, StartedAndEnded):
            return self._started_and_ended(record, event, now)
        transition = _TRANSITIONS.get((record.state, type(event)))
        if transition is None:
            return Outcome(record, (Ignore(f"job already {record.state.value}"),))
        if isinstance(event, AttemptEnd) and event.attempt != record.attempt:
            return Outcome(record, (Ignore(f"superseded attempt {event.attempt}"),))
        return transition(self, record, event, now)

    def _started_and_ended(self, record: JobRecord, event: StartedAndEnded, now: float) -> Outcome:
        """The start, then the end as of the attempt it granted (none: the end is dropped):
        one record, and the actions of both (the start's is its grant alone)."""
        ran = event.started
        if record.attempt and (record.delivery, record.node) == (ran.delivery, ran.node):
            # Its own write landed before, and the answer was lost: the same end again.
            started = Outcome(record, (RunHandler(record.attempt),))
        else:
            started = self.apply(record, ran, now)
        grant = next((a for a in started.actions if isinstance(a, RunHandler)), None)
        if grant is None:
            return started
        ended = self.apply(started.record, replace(event.end, attempt=grant.attempt), now)
        return Outcome(ended.record, started.actions + ended.actions)

    # The transitions; `apply` has already dropped the ends of other attempts.

    def _started(self, record: JobRecord, event: Started, now: float) -> Outcome:
        if event.delivery < record.delivery:
            return Outcome(record, (Ignore(f"superseded delivery {event.delivery}"),))
        if event.delivery == record.delivery:
            if record.state is JobState.RUNNING and event.node == record.node:
                return Outcome(record, (RunHandler(record.attempt),))  # its own start, again
            return Outcome(record, (Ignore(f"delivery {event.delivery} was granted before"),))
        if record.state is JobState.RUNNING and record.attempt >= self.max_attempts:
            # Its work came back: the last attempt's node went silent.
            message = f"node {record.node} went silent on the last attempt ({record.attempt})"
            return _ended(record, JobState.FAILED, DeliverError("failed", message))
        attempt = record.attempt + 1
        running = record.model_copy(
            update={
                "state": JobState.RUNNING,
                "attempt": attempt,
                "delivery": event.delivery,
                "node": event.node,
                "unserved_since": None,
            }
        )
        return Outcome(running, (RunHandler(attempt),))

    def _succeeded(self, record: JobRecord, event: Succeeded, _now: float) -> Outcome:
        return _ended(record, JobState.DONE, DeliverResult(event.data))

    def _attempt_failed(self, record: JobRecord, event: AttemptFailed, now: float) -> Outcome:
        if event.attempt >= self.max_attempts:
            return _ended(record, JobState.FAILED, DeliverError("failed", event.message))
        waiting = record.model_copy(update={"state": JobState.PENDING, "waiting_since": now})
        return Outcome(waiting, (RetryLater(),))

    def _timer(self, record: JobRecord, event: TimerFired, now: float) -> Outcome:
        if record.attempt == 0:  # never started: the pending timeout
            deadline = self.pending_deadline(record.waiting_since)
            if now < deadline:
                return Outcome(record, (CheckAt(deadline),))
            message = f"no node took a {record.kind!r} job within {self.pending_timeout:g} s"
            return _ended(record, JobState.NO_CAPACITY, DeliverError("no_capacity", message))
        # Started: its fate is JetStream's (a silent node's work goes to the next node),
        # as long as some node serves the kind.
        if event.served:
            # A running attempt's node would be found dead after the job timeout; a retry
            # waits for a free slot.
            again = self.job_timeout if record.state is JobState.RUNNING else self.pending_timeout
            served = record.model_copy(update={"unserved_since": None})
            return Outcome(served, (CheckAt(now + again),))
        since = now if record.unserved_since is None else record.unserved_since
        if now < since + self.unserved_grace:
            unserved = record.model_copy(update={"unserved_since": since})
            return Outcome(unserved, (CheckAt(since + self.unserved_grace),))
        message = (
            f"attempt {record.attempt} ended or was lost, and no node has served"
            f" {record.kind!r} for {self.unserved_grace:g} s"
        )
        return _ended(record, JobState.FAILED, DeliverError("failed", message))

    # A terminal job meeting its timer, its work, or the input that ended it, again: its
    # end may not have been carried out (see the rules).

    def _result_again(self, record: JobRecord, event: Succeeded, _now: float) -> Outcome:
        return _again(record, record.ended_with == DeliverResult(event.data))

    def _failure_again(self, record: JobRecord, event: AttemptFailed, _now: float) -> Outcome:
        return _again(record, record.ended_with == DeliverError("failed", event.message))

    def _ended_again(self, record: JobRecord, _event: TimerFired | Started, _now: float) -> Outcome:
        return _again(record, True)

    def _retry_again(self, record: JobRecord, _event: AttemptFailed, _now: float) -> Outcome:
        """The failure of the attempt that left the job waiting, again: its node's write
        landed unconfirmed, and the node has still to hand the work back."""
        return Outcome(record, (RetryLater(),))


def _ended(record: JobRecord, state: JobState, delivery: DeliverResult | DeliverError) -> Outcome:
    """The job ends with `delivery`; its work message is withdrawn once that is stored."""
    ended = record.model_copy(
        update={"state": state, "ended_with": delivery, "unserved_since": None}
    )
    return Outcome(ended, (delivery, WithdrawJob(ended.job_seq)))


def _again(record: JobRecord, ended_by_it: bool) -> Outcome:
    """The terminal delivery and the withdrawal again, if the input `ended_by_it` (or is
    the job's timer, or its work)."""
    if not ended_by_it or record.ended_with is None:
        return Outcome(record, (Ignore(f"job already {record.state.value}"),))
    return Outcome(record, (record.ended_with, WithdrawJob(record.job_seq)))


_P, _R = JobState.PENDING, JobState.RUNNING
_DONE, _FAILED = JobState.DONE, JobState.FAILED
_TERMINAL = [state for state in JobState if state.terminal]

#: (state, input) -> transition. A pair that is not here changes nothing: the input
#: is ignored, and the log says why.
_TRANSITIONS: dict[tuple[JobState, type[JobInput]], Transition] = {
    (_P, Started): JobLedger._started,
    (_R, Started): JobLedger._started,
    (_R, Succeeded): JobLedger._succeeded,
    (_R, AttemptFailed): JobLedger._attempt_failed,
    (_P, AttemptFailed): JobLedger._retry_again,  # `apply` dropped other attempts' ends
    (_P, TimerFired): JobLedger._timer,
    (_R, TimerFired): JobLedger._timer,
    (_DONE, Succeeded): JobLedger._result_again,
    (_FAILED, AttemptFailed): JobLedger._failure_again,
    **{(state, TimerFired): JobLedger._ended_again for state in _TERMINAL},
    **{(state, Started): JobLedger._ended_again for state in _TERMINAL},
}
