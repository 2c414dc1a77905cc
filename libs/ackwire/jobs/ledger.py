"""A job's life, with no I/O: a record, an input, a transition table, actions out.

Everything that changes a job's state lives in this file. The scheduler keeps
each job's `JobRecord` on the bus (KV, written by compare-and-set), feeds the
ledger what happened (a node started, progressed, succeeded or failed an
attempt; a timer fired) with the current time, writes back the new record and
carries out the actions. Because the record is the whole state, any scheduler
replica can take the next input for any job.

Rules (docs/protocol.md, Jobs):

- a job's work is dispatched (stored for nodes) until the store confirms it,
  each time its timer finds it unconfirmed before any attempt started: a
  dispatch lost to a NATS failover is repeated, and the store dedupes a repeat;
- no attempt starts within the pending timeout: `no_capacity`;
- a node silent past the job timeout (no progress, no keep-alive, no result)
  is presumed dead for that job: it runs again elsewhere (JetStream redelivers
  its work message), up to the attempt limit, then `failed`; a handler that
  raised is a failed attempt;
- a job a timer ends (`no_capacity`, or `failed` for a lost attempt) has its
  work withdrawn before the client is told: no node may run it after, its
  side effects unknown to a client told it did not happen;
- the newest attempt wins: anything from an older attempt is dropped;
- a terminal state is final: nothing (no timer, no late result) changes it, so
  a timeout can never fire for a job whose result is recorded. Its receipt
  (the client acked the result, or the result expired undelivered) is only
  noted on the record;
- the scheduler records an outcome before it carries out the actions, so the
  input that made a job terminal may come again (the scheduler stopped in
  between, and its input was not acked): then the same terminal delivery is
  asked for again, and the store dedupes it by its id. Any other input meeting
  a terminal job is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue


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


class JobRecord(BaseModel):
    """Everything the ledger knows of one job (stored as the job's KV value)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    session_id: str
    user: str | None = None
    kind: str
    trace_id: str
    state: JobState = JobState.PENDING
    attempt: int = 0
    """The newest attempt heard of (JetStream's delivery count of the work message)."""
    node: str | None = None
    waiting_since: float
    """When the job last started waiting for a node (submitted, or its attempt was lost)."""
    last_heard_at: float | None = None
    work_seq: int | None = None
    """The work message's sequence in the work stream, once the store confirmed it."""
    receipt: Literal["delivered", "expired"] | None = None
    """What became of the terminal delivery: acked by the client, or expired unacked."""
    timed_out: DeliverError | None = None
    """The error a timer ended the job with, asked for again if that timer comes again."""

    def refuses(self, attempt: int) -> str | None:
        """Why a node must not run `attempt` of the job (None: it may). A node asks before
        it runs a handler: work of a job that ended is withdrawn, but a node may have
        fetched it just before, or the withdrawal may not have been done yet."""
        if self.state.terminal:
            return f"job already {self.state.value}"
        if attempt < self.attempt:
            return f"superseded attempt {attempt}"
        return None


# -- inputs --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
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


@dataclass(frozen=True, slots=True)
class WorkDispatched:
    """The store confirmed the job's work message, at `seq` of the work stream."""

    seq: int


AttemptInput = Started | Progressed | KeptAlive | Succeeded | AttemptFailed
JobInput = AttemptInput | TimerFired | ResultReceipted | WorkDispatched


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
class DispatchWork:
    """Store the job's work for nodes; its id is the job's, so the store dedupes a repeat."""


@dataclass(frozen=True, slots=True)
class WithdrawWork:
    """Delete the job's work message (`seq` of the work stream), so that no node runs it
    (a message gone already is fine)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to do; `reason` is for the log (a superseded attempt, a duplicate…)."""

    reason: str


JobAction = (
    DeliverResult | DeliverProgress | DeliverError | CheckAt | DispatchWork | WithdrawWork | Ignore
)


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

    def submitted(
        self,
        *,
        job_id: str,
        session_id: str,
        user: str | None = None,
        kind: str,
        trace_id: str,
        now: float,
    ) -> Outcome:
        record = JobRecord(
            job_id=job_id,
            session_id=session_id,
            user=user,
            kind=kind,
            trace_id=trace_id,
            waiting_since=now,
        )
        return Outcome(record, (DispatchWork(), CheckAt(now + self.pending_timeout)))

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
        return Outcome(running, (CheckAt(now + self.job_timeout),))

    def _progressed(self, record: JobRecord, event: Progressed, now: float) -> Outcome:
        running = _heard_from(record, event.attempt, now)
        return Outcome(running, (DeliverProgress(event.attempt, event.percent),))

    def _kept_alive(self, record: JobRecord, event: KeptAlive, now: float) -> Outcome:
        return Outcome(_heard_from(record, event.attempt, now), ())

    def _succeeded(self, record: JobRecord, event: Succeeded, now: float) -> Outcome:
        done = record.model_copy(
            update={"state": JobState.DONE, "attempt": event.attempt, "last_heard_at": now}
        )
        return Outcome(done, (DeliverResult(event.data),))

    def _attempt_failed(self, record: JobRecord, event: AttemptFailed, now: float) -> Outcome:
        if event.attempt >= self.max_attempts:
            failed = record.model_copy(update={"state": JobState.FAILED, "attempt": event.attempt})
            return Outcome(failed, (DeliverError("failed", event.message),))
        waiting = record.model_copy(
            update={"state": JobState.PENDING, "attempt": event.attempt, "waiting_since": now}
        )
        return Outcome(waiting, (CheckAt(now + self.pending_timeout),))

    def _pending_timer(self, record: JobRecord, _event: TimerFired, now: float) -> Outcome:
        deadline = record.waiting_since + self.pending_timeout
        if now < deadline:
            if record.attempt == 0 and record.work_seq is None:  # its dispatch failed, or is slow
                return Outcome(record, (DispatchWork(), CheckAt(deadline)))
            return Outcome(record, (CheckAt(deadline),))
        if record.attempt == 0:
            message = f"no node took a {record.kind!r} job within {self.pending_timeout:g} s"
            return _timed_out(record, JobState.NO_CAPACITY, DeliverError("no_capacity", message))
        message = f"attempt {record.attempt} was lost and no node took the job again"
        return _timed_out(record, JobState.FAILED, DeliverError("failed", message))

    def _work_dispatched(self, record: JobRecord, event: WorkDispatched, _now: float) -> Outcome:
        return Outcome(record.model_copy(update={"work_seq": event.seq}), ())

    def _work_dispatched_too_late(
        self, record: JobRecord, event: WorkDispatched, _now: float
    ) -> Outcome:
        """The job ended while the store took its work: withdraw that."""
        ended = record.model_copy(update={"work_seq": event.seq})
        return Outcome(ended, _withdrawal(ended))

    def _receipted(self, record: JobRecord, event: ResultReceipted, _now: float) -> Outcome:
        if record.receipt is not None:
            return Outcome(record, (Ignore(f"receipt already {record.receipt}"),))
        return Outcome(record.model_copy(update={"receipt": event.outcome}), ())

    def _running_timer(self, record: JobRecord, _event: TimerFired, now: float) -> Outcome:
        heard = record.last_heard_at if record.last_heard_at is not None else record.waiting_since
        deadline = heard + self.job_timeout
        if now < deadline:
            return Outcome(record, (CheckAt(deadline),))
        if record.attempt >= self.max_attempts:
            message = f"node {record.node} went silent on the last attempt ({record.attempt})"
            return _timed_out(record, JobState.FAILED, DeliverError("failed", message))
        # JetStream redelivers the work message to another node; wait for it to start.
        waiting = record.model_copy(update={"state": JobState.PENDING, "waiting_since": now})
        return Outcome(waiting, (CheckAt(now + self.pending_timeout),))

    # A terminal job meeting the input that ended it, again (see the module's rules).

    def _result_again(self, record: JobRecord, event: Succeeded, _now: float) -> Outcome:
        return _again(record, event.attempt == record.attempt, DeliverResult(event.data))

    def _failure_again(self, record: JobRecord, event: AttemptFailed, _now: float) -> Outcome:
        ended_by_it = record.timed_out is None and event.attempt == record.attempt
        return _again(record, ended_by_it, DeliverError("failed", event.message))

    def _timer_again(self, record: JobRecord, _event: TimerFired, _now: float) -> Outcome:
        if record.timed_out is None:  # a report ended the job; this is its timer's last call
            return _again(record, False)
        return _again(record, True, *_withdrawal(record), record.timed_out)


def _heard_from(record: JobRecord, attempt: int, now: float) -> JobRecord:
    """The record once `attempt` was heard to run (it may have been thought lost)."""
    return record.model_copy(
        update={"state": JobState.RUNNING, "attempt": attempt, "last_heard_at": now}
    )


def _timed_out(record: JobRecord, state: JobState, error: DeliverError) -> Outcome:
    """A timer ends the job with `error`, its work withdrawn first."""
    ended = record.model_copy(update={"state": state, "timed_out": error})
    return Outcome(ended, (*_withdrawal(ended), error))


def _withdrawal(record: JobRecord) -> tuple[WithdrawWork, ...]:
    """Withdraw the job's work, if the store confirmed it (else a node that gets it finds the
    job ended; see `JobRecord.refuses`)."""
    return () if record.work_seq is None else (WithdrawWork(record.work_seq),)


def _again(record: JobRecord, ended_by_it: bool, *actions: JobAction) -> Outcome:
    """The terminal job's `actions` again if the input `ended_by_it`, and the client's receipt
    does not show them done already; else the input is ignored."""
    if not ended_by_it or record.receipt is not None:
        return Outcome(record, (Ignore(f"job already {record.state.value}"),))
    return Outcome(record, actions)


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
    (_P, WorkDispatched): JobLedger._work_dispatched,
    (_R, WorkDispatched): JobLedger._work_dispatched,
    (_DONE, Succeeded): JobLedger._result_again,
    (_FAILED, AttemptFailed): JobLedger._failure_again,
    (_FAILED, TimerFired): JobLedger._timer_again,
    (_NO_CAPACITY, TimerFired): JobLedger._timer_again,
    (_FAILED, WorkDispatched): JobLedger._work_dispatched_too_late,
    (_NO_CAPACITY, WorkDispatched): JobLedger._work_dispatched_too_late,
    **{(state, ResultReceipted): JobLedger._receipted for state in JobState if state.terminal},
}
