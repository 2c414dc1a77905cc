"""JobLedger, without sockets: every rule of a job's life as a row of inputs and outcome,
then the whole design around it as a model, under any history Hypothesis finds."""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from ackwire.jobs.ledger import (
    AttemptFailed,
    CheckAt,
    DeliverError,
    DeliverResult,
    Ignore,
    JobInput,
    JobLedger,
    JobRecord,
    JobState,
    Outcome,
    RetryLater,
    RunHandler,
    Started,
    StartedAndEnded,
    Succeeded,
    TimerFired,
    WithdrawJob,
)
from ackwire.jobs.messages import TERMINAL_SUFFIX
from ackwire.jobs.records import Applied, Version

LEDGER = JobLedger(pending_timeout=10, job_timeout=300, max_attempts=3)
#: Where the job's work message sits in the jobs stream.
SEQ = 7
JOB_ID = "j-1"


def new_job(at: float = 0.0, ledger: JobLedger = LEDGER) -> JobRecord:
    """A job stored at `at`, its work message at `SEQ` of the jobs stream."""
    return ledger.submitted(
        job_id=JOB_ID, session_id="s-1", kind="echo", trace_id="t", job_seq=SEQ, at=at
    )


def run(record: JobRecord, *steps: tuple[JobInput, float]) -> tuple[JobRecord, list[object]]:
    actions: list[object] = []
    for event, now in steps:
        outcome = LEDGER.apply(record, event, now)
        record = outcome.record
        actions.extend(outcome.actions)
    return record, actions


def state_of(record: JobRecord) -> tuple[JobState, int, int, str | None]:
    return record.state, record.attempt, record.delivery, record.node


# -- a job's way -------------------------------------------------------------------


def test_a_job_runs_and_its_result_is_stored_before_its_work_is_withdrawn() -> None:
    record, actions = run(
        new_job(), (Started(1, "node-1"), 1), (Succeeded(1, {"text": "hello"}), 3)
    )
    assert state_of(record) == (JobState.DONE, 1, 1, "node-1")
    assert record.ended_with == DeliverResult({"text": "hello"})
    assert actions == [RunHandler(1), DeliverResult({"text": "hello"}), WithdrawJob(SEQ)]


# -- a quick first attempt: its start asked for with its end --------------------------


def test_a_quick_first_attempt_is_started_and_ended_in_one_record() -> None:
    one = LEDGER.apply(new_job(), StartedAndEnded(Started(1, "a"), Succeeded(0, {"n": 1})), 2)
    two, _ = run(new_job(), (Started(1, "a"), 2), (Succeeded(1, {"n": 1}), 2))
    assert one.record == two
    assert one.actions == (RunHandler(1), DeliverResult({"n": 1}), WithdrawJob(SEQ))


def test_a_quick_first_attempt_that_raised_hands_the_work_back_as_a_spent_attempt() -> None:
    failed = AttemptFailed(0, "boom")
    outcome = LEDGER.apply(new_job(), StartedAndEnded(Started(1, "a"), failed), 2)
    assert outcome.actions == (RunHandler(1), RetryLater())
    assert (outcome.record.state, outcome.record.attempt) == (JobState.PENDING, 1)


@pytest.mark.parametrize(
    ("end", "again"),
    [
        (Succeeded(0, {"n": 1}), (RunHandler(1), DeliverResult({"n": 1}), WithdrawJob(SEQ))),
        (AttemptFailed(0, "boom"), (RunHandler(1), RetryLater())),
    ],
    ids=["succeeded", "failed"],
)
def test_a_quick_first_attempt_written_unconfirmed_asks_again_for_what_it_decided(
    end: Succeeded | AttemptFailed, again: tuple[object, ...]
) -> None:
    """Its write landed, its answer was lost: the same report again is granted as the
    same attempt, and asks again for the delivery, or the hand-back, it decided."""
    both = StartedAndEnded(Started(1, "a"), end)
    written = LEDGER.apply(new_job(), both, 2).record
    assert LEDGER.apply(written, both, 3) == Outcome(written, again)


def test_a_quick_first_attempt_of_a_job_that_ended_meanwhile_is_dropped() -> None:
    """Its timer found it not started (the node's clock far behind): the handler's end is
    not the job's; what the job ended with is asked for again."""
    ended, _ = run(new_job(), (TimerFired(), PENDING_TIMEOUT_S))
    outcome = LEDGER.apply(ended, StartedAndEnded(Started(1, "a"), Succeeded(0, {})), 11)
    assert outcome.record == ended
    assert outcome.actions == (ended.ended_with, WithdrawJob(SEQ))
    assert not any(isinstance(action, RunHandler) for action in outcome.actions)


# -- attempts: a grant is one ------------------------------------------------------


def test_a_grant_is_an_attempt_and_a_failed_one_hands_the_work_back() -> None:
    record, actions = run(
        new_job(), (Started(1, "a"), 1), (AttemptFailed(1, "boom"), 2), (Started(2, "b"), 3)
    )
    assert actions == [RunHandler(1), RetryLater(), RunHandler(2)]
    assert state_of(record) == (JobState.RUNNING, 2, 2, "b")


def test_a_failed_attempt_waits_for_the_next_from_when_it_failed() -> None:
    record, _ = run(new_job(), (Started(1, "a"), 1), (AttemptFailed(1, "boom"), 2))
    assert (record.state, record.attempt, record.waiting_since) == (JobState.PENDING, 1, 2)


def test_a_failure_whose_answer_was_lost_hands_the_work_back_again() -> None:
    """Its node wrote the failed attempt, lost the answer and reports it again: the work
    goes back now, as the first answer said (else the next attempt waits for ack_wait)."""
    waiting, _ = run(new_job(), (Started(1, "a"), 1), (AttemptFailed(1, "boom"), 2))
    assert LEDGER.apply(waiting, AttemptFailed(1, "boom"), 3) == Outcome(waiting, (RetryLater(),))


def test_a_delivery_the_bus_kept_from_being_granted_spends_no_attempt() -> None:
    """Deliveries 1, 2, 4, 5, 7 and 8 reached nodes that could not write their start, and
    were handed back unstarted: only the three granted ones count."""
    record, actions = run(
        new_job(),
        (Started(3, "a"), 1),
        (AttemptFailed(1, "boom"), 2),
        (Started(6, "b"), 3),
        (AttemptFailed(2, "boom"), 4),
        (Started(9, "a"), 5),
    )
    assert actions == [RunHandler(1), RetryLater(), RunHandler(2), RetryLater(), RunHandler(3)]
    assert state_of(record) == (JobState.RUNNING, 3, 9, "a")


def test_a_newer_delivery_of_a_running_job_is_the_next_attempt_and_the_lost_one_counts() -> None:
    record, actions = run(new_job(), (Started(1, "silent"), 1), (Started(2, "b"), 301))
    assert actions == [RunHandler(1), RunHandler(2)]
    assert state_of(record) == (JobState.RUNNING, 2, 2, "b")


def test_a_silent_node_on_the_last_attempt_fails_the_job_when_its_work_comes_back() -> None:
    record, actions = run(
        new_job(),
        (Started(1, "a"), 1),
        (Started(2, "b"), 301),
        (Started(3, "c"), 601),
        (Started(4, "d"), 901),
    )
    failure = DeliverError("failed", "node c went silent on the last attempt (3)")
    # No fourth attempt: the job fails, and says whose silence it was.
    assert actions == [RunHandler(1), RunHandler(2), RunHandler(3), failure, WithdrawJob(SEQ)]
    assert state_of(record) == (JobState.FAILED, 3, 3, "c")
    assert record.ended_with == failure


def test_a_raising_handler_fails_its_attempt_until_the_last() -> None:
    record, actions = run(
        new_job(),
        (Started(1, "n"), 1),
        (AttemptFailed(1, "boom"), 2),
        (Started(2, "n"), 3),
        (AttemptFailed(2, "boom"), 4),
        (Started(3, "n"), 5),
        (AttemptFailed(3, "boom at last"), 6),
    )
    assert record.state is JobState.FAILED
    assert actions == [
        RunHandler(1),
        RetryLater(),
        RunHandler(2),
        RetryLater(),
        RunHandler(3),
        DeliverError("failed", "boom at last"),
        WithdrawJob(SEQ),
    ]


# -- which delivery may run --------------------------------------------------------


def test_a_start_whose_answer_was_lost_is_granted_again() -> None:
    """Its node wrote the start, lost the answer and asks again: the same attempt, and
    nothing to write (the record stays as it is)."""
    running, _ = run(new_job(), (Started(1, "a"), 1))
    assert LEDGER.apply(running, Started(1, "a"), 2) == Outcome(running, (RunHandler(1),))


def test_a_delivery_granted_before_is_not_granted_to_another_node_nor_after_it_ended() -> None:
    running, _ = run(new_job(), (Started(1, "a"), 1))
    again = Outcome(running, (Ignore("delivery 1 was granted before"),))
    assert LEDGER.apply(running, Started(1, "b"), 2) == again
    waiting, _ = run(running, (AttemptFailed(1, "boom"), 2))
    again = Outcome(waiting, (Ignore("delivery 1 was granted before"),))
    assert LEDGER.apply(waiting, Started(1, "a"), 3) == again


def test_an_older_delivery_is_superseded() -> None:
    running, _ = run(new_job(), (Started(2, "b"), 1))
    superseded = Outcome(running, (Ignore("superseded delivery 1"),))
    assert LEDGER.apply(running, Started(1, "a"), 2) == superseded


@pytest.mark.parametrize("late", [Succeeded(1, "late"), AttemptFailed(1, "late")])
def test_a_late_result_from_a_superseded_attempt_is_dropped(late: JobInput) -> None:
    record, actions = run(
        new_job(),
        (Started(1, "slow"), 1),
        (Started(2, "fast"), 302),
        (late, 303),
        (Succeeded(2, "ok"), 304),
    )
    assert actions == [
        RunHandler(1),
        RunHandler(2),
        Ignore("superseded attempt 1"),
        DeliverResult("ok"),
        WithdrawJob(SEQ),
    ]
    assert record.ended_with == DeliverResult("ok")


# -- the timer ---------------------------------------------------------------------


def test_the_timer_of_a_job_nobody_started_changes_nothing_before_its_deadline() -> None:
    """So the scheduler writes no record for it: a node's start is most jobs' first write."""
    fresh = new_job()
    for served in (True, False):
        assert LEDGER.apply(fresh, TimerFired(served), 9.9) == Outcome(fresh, (CheckAt(10),))


def test_no_attempt_granted_within_the_pending_timeout_is_no_capacity() -> None:
    error = DeliverError("no_capacity", "no node took a 'echo' job within 10 s")
    record, actions = run(new_job(at=100), (TimerFired(), 109.9), (TimerFired(), 110))
    # The client is told first; the work (no node gets it after) goes once it is.
    assert actions == [CheckAt(110), error, WithdrawJob(SEQ)]
    assert (record.state, record.ended_with) == (JobState.NO_CAPACITY, error)


def test_a_grant_written_before_the_timer_decided_is_not_no_capacity() -> None:
    """The pending deadline passed, but a node's start was written first: the job runs."""
    record, actions = run(new_job(), (Started(1, "n"), 15), (TimerFired(), 16))
    assert (record.state, actions) == (JobState.RUNNING, [RunHandler(1), CheckAt(316)])


def test_a_started_job_is_not_failed_while_a_node_serves_its_kind() -> None:
    """However long it runs: its node keeps its work alive for JetStream, whose ack_wait is
    the one clock of an attempt's liveness."""
    record, actions = run(
        new_job(),
        (Started(1, "n"), 1),
        (TimerFired(served=True), 301),
        (TimerFired(served=True), 601),
        (TimerFired(served=True), 100_000),
    )
    assert record.state is JobState.RUNNING
    assert actions == [RunHandler(1), CheckAt(601), CheckAt(901), CheckAt(100_300)]


def test_a_job_waiting_for_its_next_attempt_is_not_ended_while_a_node_serves_its_kind() -> None:
    """Not `no_capacity` either: an attempt was granted. The timer checks again a pending
    timeout on (a retry waits for a free slot)."""
    record, actions = run(
        new_job(),
        (Started(1, "n"), 1),
        (AttemptFailed(1, "boom"), 2),
        (TimerFired(served=True), 12),
        (TimerFired(served=True), 10_000),
    )
    assert record.state is JobState.PENDING
    assert actions == [RunHandler(1), RetryLater(), CheckAt(22), CheckAt(10_010)]


def test_no_node_for_the_grace_fails_a_job_whose_attempt_was_lost() -> None:
    assert LEDGER.unserved_grace == 310  # a job timeout, then a pending timeout
    failure = DeliverError(
        "failed", "attempt 1 ended or was lost, and no node has served 'echo' for 310 s"
    )
    record, actions = run(
        new_job(),
        (Started(1, "n"), 1),
        (TimerFired(served=False), 301),
        (TimerFired(served=False), 610),
        (TimerFired(served=False), 611),
    )
    assert actions == [RunHandler(1), CheckAt(611), CheckAt(611), failure, WithdrawJob(SEQ)]
    assert (record.state, record.ended_with) == (JobState.FAILED, failure)  # not no_capacity


def test_a_node_serving_the_kind_again_starts_the_grace_over() -> None:
    record, actions = run(
        new_job(),
        (Started(1, "n"), 1),
        (TimerFired(served=False), 301),
        (TimerFired(served=True), 400),
        (TimerFired(served=False), 500),
        (TimerFired(served=False), 809),
    )
    assert actions == [RunHandler(1), CheckAt(611), CheckAt(700), CheckAt(810), CheckAt(810)]
    assert (record.state, record.unserved_since) == (JobState.RUNNING, 500)


def test_a_grant_ends_the_wait_for_a_node() -> None:
    record, _ = run(
        new_job(), (Started(1, "n"), 1), (TimerFired(served=False), 301), (Started(2, "m"), 320)
    )
    assert (record.state, record.unserved_since) == (JobState.RUNNING, None)


def test_the_seed_bug_no_timeout_after_the_result_came_back() -> None:
    record, actions = run(
        new_job(),
        (Started(1, "n"), 1),
        (Succeeded(1, "ok"), 2),
        (TimerFired(served=True), 10),
        (TimerFired(served=False), 10_000),
    )
    assert record.state is JobState.DONE
    # A timer that outlived the result only makes sure of its delivery, and ends.
    assert actions == [RunHandler(1)] + [DeliverResult("ok"), WithdrawJob(SEQ)] * 3


# -- terminal is final -------------------------------------------------------------


def ended_jobs() -> dict[str, JobRecord]:
    """A job in each way it can end."""
    started: tuple[JobInput, float] = (Started(1, "n"), 1)
    return {
        "done": run(new_job(), started, (Succeeded(1, "ok"), 2))[0],
        "raised": run(
            new_job(),
            started,
            (AttemptFailed(1, "boom"), 2),
            (Started(2, "n"), 3),
            (AttemptFailed(2, "boom"), 4),
            (Started(3, "n"), 5),
            (AttemptFailed(3, "boom"), 6),
        )[0],
        "silent": run(new_job(), *[(Started(d, f"n{d}"), 300 * d) for d in range(1, 5)])[0],
        "unserved": run(new_job(), started, (TimerFired(False), 301), (TimerFired(False), 611))[0],
        "no_capacity": run(new_job(), (TimerFired(), 10))[0],
    }


ENDED = ended_jobs()


@pytest.mark.parametrize("how", ENDED)
def test_a_terminal_job_meeting_its_timer_or_its_work_asks_again_for_the_same_delivery(
    how: str,
) -> None:
    """Its end may not have been carried out: the writer may have stopped between writing
    the record and storing the delivery, or withdrawing the work. The store dedupes the
    delivery by its id, and a message gone already is fine to withdraw."""
    ended = ENDED[how]
    assert ended.state.terminal
    assert ended.ended_with is not None
    again = Outcome(ended, (ended.ended_with, WithdrawJob(SEQ)))
    for event in (TimerFired(served=True), TimerFired(served=False), Started(99, "late")):
        assert LEDGER.apply(ended, event, 100_000) == again


def test_the_input_that_ended_a_job_asks_again_for_the_same_delivery() -> None:
    done, raised = ENDED["done"], ENDED["raised"]
    assert LEDGER.apply(done, Succeeded(1, "ok"), 3) == Outcome(
        done, (DeliverResult("ok"), WithdrawJob(SEQ))
    )
    assert LEDGER.apply(raised, AttemptFailed(3, "boom"), 7) == Outcome(
        raised, (DeliverError("failed", "boom"), WithdrawJob(SEQ))
    )


@pytest.mark.parametrize(
    ("how", "event", "reason"),
    [
        ("done", Succeeded(1, "other"), "job already done"),
        ("done", AttemptFailed(1, "boom"), "job already done"),
        ("raised", AttemptFailed(3, "another"), "job already failed"),
        ("raised", Succeeded(3, "late"), "job already failed"),
        ("silent", AttemptFailed(3, "boom"), "job already failed"),
        ("silent", Succeeded(3, "late"), "job already failed"),
        ("unserved", Succeeded(1, "late"), "job already failed"),
        ("no_capacity", Succeeded(1, "late"), "job already no_capacity"),
    ],
)
def test_any_other_input_meeting_a_terminal_job_changes_nothing(
    how: str, event: JobInput, reason: str
) -> None:
    ended = ENDED[how]
    assert LEDGER.apply(ended, event, 100_000) == Outcome(ended, (Ignore(reason),))


inputs = st.one_of(
    st.builds(Started, delivery=st.integers(1, 6), node=st.sampled_from(["a", "b"])),
    st.builds(Succeeded, attempt=st.integers(1, 4), data=st.sampled_from(["ok", "other"])),
    st.builds(AttemptFailed, attempt=st.integers(1, 4), message=st.sampled_from(["boom", "x"])),
    st.builds(TimerFired, served=st.booleans()),
)


@given(how=st.sampled_from(sorted(ENDED)), event=inputs, now=st.floats(0, 1e6))
def test_a_terminal_state_is_final(how: str, event: JobInput, now: float) -> None:
    ended = ENDED[how]
    outcome = LEDGER.apply(ended, event, now)
    assert outcome.record == ended
    assert outcome.actions in {
        (ended.ended_with, WithdrawJob(SEQ)),
        (Ignore(f"job already {ended.state.value}"),),
        (Ignore(f"superseded attempt {getattr(event, 'attempt', None)}"),),
    }


def test_a_record_read_back_from_the_bus_is_the_record_written() -> None:
    for ended in ENDED.values():
        assert JobRecord.model_validate_json(ended.model_dump_json()) == ended


# -- the whole design, as a model --------------------------------------------------
#
# What drives the ledger, in plain Python, one step at a time: JetStream's work message
# and its two consumers (the nodes', whose ack_wait is the job timeout, and the
# scheduler's timers, whose ack_wait is the pending timeout), the job's record written by
# compare-and-set (`jobs/records.py`), nodes that take a delivery, ask, run and end it
# (`node/worker.py`), the scheduler's timer checks (`scheduler/jobs.py`), the session's
# store, which dedupes a message by its id for two minutes (the client dedupes the rest
# by id), and the client resubmitting the job, however late. Every call to the bus may
# fail (not done), or be done with its answer lost; a node may give up on the bus (its
# patience ran out), be killed between any two steps, or drain; a nak may be lost; a
# node's keep-alives may be lost until its work goes to another node; a scheduler may
# be killed, or its check outlive the timer's ack_wait.

JOB_TERMINAL_ID = JOB_ID + TERMINAL_SUFFIX
NODES = ("a", "b")
#: The sessions stream's duplicate window: a re-store of a message id within it is dropped.
DEDUPE_WINDOW_S = 120.0
#: How soon a timer whose check the bus interrupted fires again (`scheduler/jobs.py`).
TIMER_RETRY_S = 0.5
MAX_CAS_RETRIES = 10
#: How long a young job's first delivery runs before its node asks (`node/worker.py`).
QUICK_S = 1.0
#: The model's timeouts, and the grace they make for a kind no node serves.
PENDING_TIMEOUT_S, JOB_TIMEOUT_S = 10.0, 300.0
UNSERVED_GRACE_S = JOB_TIMEOUT_S + PENDING_TIMEOUT_S


class Fault(enum.Enum):
    NONE = "none"
    UNDONE = "undone"
    """The bus failed: the call did not happen (a nak: it was lost)."""
    LOST = "lost"
    """The call happened, but its answer was lost: the caller thinks it failed."""


class BusFailedError(Exception):
    """The model's `BusError`."""


class RecordChangedError(Exception):
    """The model's `SequenceConflictError` (and `JobChangedError`, retries spent)."""


@dataclass(frozen=True)
class Stored:
    """A message in the session's queue."""

    id: str
    delivery: DeliverResult | DeliverError
    at: float


Ask = Literal["bus", "retry", "handler"]
"""What a process waits for: its next call to the bus (a `Fault`), whether to try again
after the bus failed or give up (a bool), or its handler's next move (a `Move`)."""
Move = Literal["return", "keep_alive", "raise"]
Process = Generator[Ask, Any, None]
Call = Generator[Ask, Any, Applied]
#: What a process is told when all goes well: its call to the bus is answered, it tries
#: the bus again, its handler returns.
CALM: dict[Ask, Fault | bool | Move] = {"bus": Fault.NONE, "retry": True, "handler": "return"}


@dataclass(eq=False)
class Proc:
    """A node's attempt at one delivery of the work, or the scheduler's check of a timer."""

    node: str | None  # None: the scheduler
    delivery: int = 0
    steps: Process | None = None
    asks: Ask = "bus"
    attempt: int = 0
    """The attempt its handler runs as (0: none granted)."""
    running: bool = False
    acts_by: float | None = None
    """While its handler runs ahead of its start: when its node asks for the start, at
    the latest, then when it gives up asking (before the job's pending deadline)."""


@dataclass
class World:
    ledger: JobLedger
    now: float = 0.0
    revision: int = 0
    stored_record: Version | None = None
    """The job's record as read back from the bytes written (None: none written yet)."""
    work_present: bool = True
    delivered: int = 0
    """JetStream's delivery count of the work to the nodes."""
    holder: Proc | None = None
    """The node process whose delivery JetStream waits on (kept alive while it runs)."""
    redeliver_at: float | None = 0.0
    """When the work is due to a node (None: held, or acked)."""
    timer: Proc | None = None
    timer_due: float | None = None
    """When the timer is due to the scheduler (None: in hand, or acked)."""
    session: list[Stored] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    # What happened, for the invariants.
    grants: list[tuple[int, int]] = field(default_factory=list)
    """(attempt, delivery) of every grant written."""
    raised: bool = False
    """A handler raised."""
    lost: bool = False
    """An attempt was lost: its node killed, silent, or out of patience with the bus."""
    first_unserved_at: float | None = None
    """When a timer first found no node serving the kind."""
    story: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fresh = Version(new_job(ledger=self.ledger), 0)
        # The first delivery to the scheduler is left unanswered until the pending deadline.
        self.timer_due = self.ledger.pending_timeout

    def say(self, line: str) -> None:
        self.story.append(f"{self.now:8.1f}  {line}")

    # -- the bus --------------------------------------------------------------------

    def current(self) -> Version:
        return self.stored_record or self.fresh

    def read(self, fault: Fault) -> Version:
        if fault is not Fault.NONE:
            raise BusFailedError
        return self.current()

    def write(
        self, record: JobRecord, over: Version, fault: Fault, why: tuple[JobInput, float]
    ) -> Version:
        """Compare-and-set: written only over the revision `over` read (`why`: the input
        the ledger decided it on, and when)."""
        if fault is Fault.UNDONE:
            raise BusFailedError
        if over.revision != self.revision:
            raise BusFailedError if fault is Fault.LOST else RecordChangedError
        before = self.current().record
        self.revision += 1
        read_back = JobRecord.model_validate_json(record.model_dump_json())
        self.stored_record = Version(read_back, self.revision)
        self.written(before, record, *why)
        if fault is Fault.LOST:
            raise BusFailedError
        return Version(record, self.revision)

    def written(
        self, before: JobRecord, after: JobRecord, event: JobInput, decided_at: float
    ) -> None:
        self.say(f"record {after.state.value} attempt {after.attempt} delivery {after.delivery}")
        assert not before.state.terminal, "a terminal record was written over"
        assert after.attempt <= self.ledger.max_attempts, "more attempts than max_attempts"
        if after.attempt != before.attempt:
            assert after.attempt == before.attempt + 1
            assert after.delivery > before.delivery
            self.grants.append((after.attempt, after.delivery))
        end = event.end if isinstance(event, StartedAndEnded) else event
        if isinstance(end, Succeeded | AttemptFailed):
            assert end.attempt == after.attempt, "the end of a superseded attempt recorded"
        if after.state is JobState.DONE:  # the newest attempt's own result
            assert after.ended_with == DeliverResult({"attempt": after.attempt, "node": after.node})
        if after.state is JobState.NO_CAPACITY:
            assert not self.grants, "no_capacity for a job that was granted an attempt"
            assert not any(p.running for p in self.procs), "no_capacity while a handler runs"
        if after.state is JobState.FAILED:
            match event:
                case AttemptFailed() | StartedAndEnded(end=AttemptFailed()):
                    assert self.raised
                case Started():
                    assert self.lost, "failed for a silent node, and no attempt was lost"
                case TimerFired():
                    since = self.first_unserved_at
                    unserved_for = 0.0 if since is None else decided_at - since
                    assert unserved_for >= UNSERVED_GRACE_S, "failed, and the kind was served"

    def store(self, delivery: DeliverResult | DeliverError, fault: Fault) -> None:
        """The session queue's `put`, deduped by the message's id within the window."""
        if fault is Fault.UNDONE:
            raise BusFailedError
        record = self.current().record
        assert record.state.terminal, "a terminal delivery for a job that did not end"
        assert delivery == record.ended_with, "a delivery the record did not decide"
        copies = [s for s in self.session if s.id == JOB_TERMINAL_ID]
        assert all(s.delivery == delivery for s in copies), "two terminal deliveries"
        if not copies or self.now - copies[-1].at >= DEDUPE_WINDOW_S:
            self.say(f"stored {delivery}" + (" again" if copies else ""))
            self.session.append(Stored(JOB_TERMINAL_ID, delivery, self.now))
        if fault is Fault.LOST:
            raise BusFailedError

    def withdraw(self, seq: int, fault: Fault) -> None:
        if fault is Fault.UNDONE:
            raise BusFailedError
        assert seq == SEQ
        stored = any(s.id == JOB_TERMINAL_ID for s in self.session)
        assert stored, "the work withdrawn before its terminal delivery was stored"
        if self.work_present:
            self.say("work withdrawn")
        self.work_present = False
        if fault is Fault.LOST:
            raise BusFailedError

    # -- JetStream's two consumers of the work ----------------------------------------

    def work_due(self) -> bool:
        return self.work_present and self.redeliver_at is not None and self.now >= self.redeliver_at

    def timer_is_due(self) -> bool:
        return (
            self.work_present
            and self.timer is None
            and self.timer_due is not None
            and self.now >= self.timer_due
        )

    def release(self, proc: Proc, at: float) -> None:
        """`proc` no longer holds the work: JetStream gives it out again at `at`."""
        if proc is self.holder:
            self.holder = None
            self.redeliver_at = at

    def answer(self, proc: Proc, answer: Literal["ack", "nak"], fault: Fault) -> None:
        """A node's answer for its delivery (an older delivery's changes nothing: the newer
        one's holder answers for the work)."""
        if fault is Fault.UNDONE:  # lost: JetStream gives the work out after ack_wait
            self.release(proc, self.now + self.ledger.job_timeout)
        elif answer == "nak":
            self.release(proc, self.now)
        elif proc is self.holder:
            # Acked: never given to a node again. The job ended, but its work may still be
            # there (its end is not carried out yet): the timer sees to that.
            assert self.current().record.state.terminal, "the work of a running job acked"
            self.holder = self.redeliver_at = None

    # -- `JobRecords.apply`, and the callers' patience -------------------------------

    def apply(self, event: JobInput, known: Version | None) -> Call:
        for _ in range(MAX_CAS_RETRIES):
            version = known if known is not None else self.read((yield "bus"))
            known = None
            decided_at = self.now
            outcome = self.ledger.apply(version.record, event, decided_at)
            if outcome.record != version.record:
                try:
                    why = (event, decided_at)
                    version = self.write(outcome.record, version, (yield "bus"), why)
                except RecordChangedError:
                    continue
            for action in outcome.actions:
                if isinstance(action, DeliverResult | DeliverError):
                    self.store(action, (yield "bus"))
                elif isinstance(action, WithdrawJob):
                    self.withdraw(action.seq, (yield "bus"))
                elif isinstance(action, Ignore):
                    self.say(f"{type(event).__name__} ignored: {action.reason}")
                elif isinstance(action, CheckAt):
                    assert action.at >= decided_at
            return Applied(outcome, version)
        raise RecordChangedError

    def patiently(
        self, call: Callable[[], Call], until: float | None = None
    ) -> Generator[Ask, Any, Applied | None]:
        """The node's `_patiently`: again while the bus fails, until its patience runs out
        (None) or it is `until`; a record that kept changing is given up on at once."""
        while True:
            try:
                return (yield from call())
            except BusFailedError:
                if until is not None and self.now >= until:
                    return None
                if not (yield "retry"):
                    return None
            except RecordChangedError:
                return None

    # -- a node: `Worker._attempt` -----------------------------------------------------

    def attempt(self, proc: Proc) -> Process:
        node = proc.node
        assert node is not None
        start = Started(proc.delivery, node)
        if proc.delivery == 1 and self.now + 2 * QUICK_S < self.ledger.pending_timeout:
            # A young job's first delivery runs before it asks (its work kept alive).
            self.say(f"node {node} runs delivery 1 before asking")
            proc.running, proc.acts_by = True, self.now + QUICK_S
            move = yield "handler"
            proc.acts_by = None
            if move != "keep_alive":  # it ended within its quick time
                yield from self.quick_end(proc, start, move)
                return
            # Its quick time is up: it asks, as any delivery does, the handler running on,
            # and gives up before the pending deadline.
            proc.acts_by = self.ledger.pending_timeout - QUICK_S
        started = yield from self.patiently(
            lambda: self.apply(start, self.fresh), until=proc.acts_by
        )
        proc.acts_by = None
        if started is None:  # handed back unstarted (spent, if written after all)
            proc.running = False
            self.lost |= any(delivery == proc.delivery for _, delivery in self.grants)
            self.answer(proc, "nak", (yield "bus"))
            return
        grant = next((a for a in started.outcome.actions if isinstance(a, RunHandler)), None)
        if grant is None:
            proc.running = False
            if started.version.record.state.terminal:
                self.answer(proc, "ack", (yield "bus"))
            return  # else the newer delivery's holder answers for the work
        self.run_handler(proc, grant.attempt)
        looked_at = self.now
        while (move := (yield "handler")) == "keep_alive":
            if self.now < looked_at + self.ledger.job_timeout / 3:
                continue  # the handler runs on: its keep-alive beats every third of ack_wait
            looked_at = self.now
            try:
                current = self.read((yield "bus")).record
            except BusFailedError:
                continue
            if current.state.terminal or current.attempt != proc.attempt:
                self.say(f"node {node} cancels attempt {proc.attempt}")
                proc.running = False
                return  # superseded, or ended elsewhere: it reports nothing
        proc.running = False
        end: Succeeded | AttemptFailed
        if move == "raise":
            self.raised = True
            end = AttemptFailed(proc.attempt, f"attempt {proc.attempt} raised")
        else:
            end = Succeeded(proc.attempt, {"attempt": proc.attempt, "node": node})
        self.say(f"node {node} ends attempt {proc.attempt}: {end}")
        ended = yield from self.patiently(lambda: self.apply(end, started.version))
        if ended is None:  # unreported: its work comes back after ack_wait
            self.lost = True
            return
        yield from self.answer_end(proc, ended)

    def quick_end(self, proc: Proc, start: Started, move: Move) -> Process:
        """`proc`'s handler ended before it asked: it asks for the start with the end, in
        one write, its end counting as that of the attempt granted (as the first)."""
        proc.running = False
        end: Succeeded | AttemptFailed
        if move == "raise":
            self.raised = True
            end = AttemptFailed(1, "attempt 1 raised")
        else:
            end = Succeeded(1, {"attempt": 1, "node": proc.node})
        self.say(f"node {proc.node} asks for delivery 1 and ends it: {end}")
        both = StartedAndEnded(start, end)
        ended = yield from self.patiently(lambda: self.apply(both, self.fresh))
        if ended is None:  # unreported (the run unrecorded, or its write's answer lost)
            self.lost = True
            return
        grant = next((a for a in ended.outcome.actions if isinstance(a, RunHandler)), None)
        if grant is None:
            if ended.version.record.state.terminal:
                self.answer(proc, "ack", (yield "bus"))
            return  # else the newer delivery's holder answers for the work
        proc.attempt = grant.attempt
        yield from self.answer_end(proc, ended)

    def answer_end(self, proc: Proc, ended: Applied) -> Process:
        """`Worker._settle`: JetStream's answer for the work, once the end was recorded."""
        record = ended.version.record
        handed_back = any(isinstance(action, RetryLater) for action in ended.outcome.actions)
        if record.state is JobState.PENDING and record.attempt == proc.attempt:
            assert handed_back, "a failed attempt recorded, and its work not handed back"
        if handed_back:
            self.answer(proc, "nak", (yield "bus"))
        elif record.attempt == proc.attempt and record.state.terminal:
            self.answer(proc, "ack", (yield "bus"))

    def run_handler(self, proc: Proc, attempt: int) -> None:
        """The ledger granted `attempt` to `proc`: as of the record it was decided on (the
        one on the bus now, read or written this very step)."""
        self.say(f"node {proc.node} runs delivery {proc.delivery} as attempt {attempt}")
        record = self.current().record
        assert not record.state.terminal, "a handler granted for a job that ended"
        assert (record.attempt, record.delivery, record.node) == (
            attempt,
            proc.delivery,
            proc.node,
        )
        newest = max(delivery for _, delivery in self.grants)
        assert proc.delivery == newest, "a handler granted for an older delivery"
        others = [p.attempt for p in self.procs if p.running and p is not proc]
        assert attempt not in others, "two handlers running as one attempt"

        proc.attempt, proc.running = attempt, True

    # -- the scheduler: `JobTimers._check` ----------------------------------------------

    def check_timer(self, proc: Proc, served: bool) -> Process:
        try:
            applied = yield from self.apply(TimerFired(served), None)
        except (BusFailedError, RecordChangedError):
            self.rearm(proc, (yield "bus"), TIMER_RETRY_S)
            return
        check = next((a for a in applied.outcome.actions if isinstance(a, CheckAt)), None)
        fault = yield "bus"
        if check is not None:
            self.rearm(proc, fault, max(TIMER_RETRY_S, check.at - self.now))
        elif fault is Fault.UNDONE and proc is self.timer:  # a lost ack: it comes again
            assert not self.work_present  # (to no one: the work is gone)
            self.timer_due = self.now + self.ledger.pending_timeout

    def rearm(self, proc: Proc, fault: Fault, delay: float) -> None:
        """A nak with `delay`; a lost one comes back after the ack_wait (an older delivery's
        answer changes nothing)."""
        if proc is self.timer:
            lost = fault is Fault.UNDONE
            self.timer_due = self.now + (self.ledger.pending_timeout if lost else delay)

    # -- what happens ----------------------------------------------------------------

    def fetch(self, node: str) -> None:
        """JetStream gives the work to `node` (it is due)."""
        assert self.work_due()
        self.delivered += 1
        self.say(f"node {node} gets delivery {self.delivered}")
        proc = Proc(node, self.delivered)
        self.holder, self.redeliver_at = proc, None
        self.begin(proc, self.attempt(proc))

    def fire(self, *, served: bool) -> None:
        """The scheduler's consumer delivers the job's timer (it is due)."""
        assert self.timer_is_due()
        self.say(f"timer fires, kind {'served' if served else 'unserved'}")
        if not served and self.first_unserved_at is None:
            self.first_unserved_at = self.now
        self.timer, self.timer_due = Proc(None), None
        self.begin(self.timer, self.check_timer(self.timer, served))

    def tick(self, seconds: float) -> None:
        """Time passes; no further than when a node whose handler runs ahead of its start
        must act (ask, or give up asking)."""
        limits = [p.acts_by for p in self.procs if p.acts_by is not None]
        self.now = min([self.now + seconds, *limits])

    def waiting(self, *asks: Ask) -> list[Proc]:
        return [p for p in self.procs if p.asks in asks]

    def resume(self, proc: Proc, value: Fault | bool | Move | None) -> None:
        assert proc.steps is not None
        try:
            proc.asks = proc.steps.send(value)
        except StopIteration:
            self.end(proc)

    def begin(self, proc: Proc, steps: Process) -> None:
        proc.steps = steps
        self.procs.append(proc)
        self.resume(proc, None)

    def end(self, proc: Proc) -> None:
        """`proc` stops (done, or killed): its work, still held, comes back after ack_wait."""
        assert proc.steps is not None
        proc.steps.close()
        proc.running = False
        self.procs.remove(proc)
        self.release(proc, self.now + self.ledger.job_timeout)
        if proc is self.timer:
            self.timer = None

    def kill(self, node: str) -> None:
        """`node` dies between two steps (and comes back at once, with nothing in hand)."""
        self.say(f"node {node} killed")
        for proc in [p for p in self.procs if p.node == node]:
            self.lost = True
            self.end(proc)

    def drain(self, node: str, fault: Fault) -> None:
        """`node` drains (`Worker.drain`): it stops its attempts and hands their work back,
        which JetStream gives out at once (or after ack_wait, if the nak was lost)."""
        self.say(f"node {node} drained")
        for proc in [p for p in self.procs if p.node == node]:
            self.lost = True
            self.answer(proc, "nak", fault)
            self.end(proc)

    def kill_scheduler(self) -> None:
        """The scheduler replica checking the timer dies: the timer comes back after the
        ack_wait, to any replica."""
        assert self.timer is not None
        self.say("scheduler killed")
        self.end(self.timer)
        self.timer_due = self.now + self.ledger.pending_timeout

    def timer_stalls(self) -> None:
        """The timer's check takes longer than the ack_wait (the bus is slow): JetStream
        gives the timer to a replica again, while the first check goes on."""
        assert self.timer is not None
        self.say("timer check stalls")
        self.timer, self.timer_due = None, self.now

    def keep_alives_lost(self) -> None:
        """The holder's keep-alives are lost for an ack_wait: JetStream gives the work out
        again, and its attempt (if granted) is lost."""
        assert self.holder is not None
        self.say(f"node {self.holder.node}'s keep-alives lost")
        self.lost = True
        self.release(self.holder, self.now)

    def resubmit(self) -> None:
        """The client submits the job again, however late: the gateway stores the work only
        if nothing of the job is stored (an expected last sequence of 0 over the job's
        subjects), so it creates nothing."""
        assert self.work_present or self.revision > 0, "a resubmit would store the job again"

    def check(self) -> None:
        """After every step."""
        record = self.current().record
        seen = {s.id: s.delivery for s in self.session}  # as the client dedupes them
        if seen:
            assert seen == {JOB_TERMINAL_ID: record.ended_with}
        running = [p.attempt for p in self.procs if p.running and p.attempt]
        assert len(running) == len(set(running)), "two handlers running as one attempt"

    def settle(self) -> None:
        """No more faults, every node alive, every handler returns: run to quiescence."""
        for _ in range(1_000):
            if self.procs:
                self.resume(self.procs[0], CALM[self.procs[0].asks])
            elif self.work_due():
                self.fetch(NODES[0])
            elif self.timer_is_due():
                self.fire(served=True)
            elif self.work_present:
                due = [t for t in (self.redeliver_at, self.timer_due) if t is not None]
                assert due, "the work is there, and nothing will ever take it"
                self.now = max(self.now, min(due))
            else:
                return
            self.check()
        raise AssertionError("the job never settled")


# -- the history's steps -----------------------------------------------------------

How = Literal["well", "bus_fails", "answer_lost", "gives_up", "looks", "returns", "raises"]
#: How a process's next step may go: what it must be waiting for, and what it is told.
HOWS: dict[How, tuple[tuple[Ask, ...], Fault | bool | Move]] = {
    "well": (("bus", "retry"), Fault.NONE),  # answered, or tried again (`CALM`)
    "bus_fails": (("bus",), Fault.UNDONE),
    "answer_lost": (("bus",), Fault.LOST),
    "gives_up": (("retry",), False),  # its patience with the bus ran out
    "looks": (("handler",), "keep_alive"),  # its keep-alive beats (and looks at the record)
    "returns": (("handler",), "return"),
    "raises": (("handler",), "raise"),
}


@dataclass(frozen=True)
class Next:
    """The `who`th process in flight (of those `how` can happen to) takes its next step."""

    who: int
    how: How = "well"


@dataclass(frozen=True)
class Fetch:
    """JetStream gives the work to `node` (it is due)."""

    node: str


@dataclass(frozen=True)
class Fire:
    """The scheduler's consumer delivers the job's timer (it is due)."""

    served: bool = True


@dataclass(frozen=True)
class Tick:
    seconds: float


@dataclass(frozen=True)
class Kill:
    """The node of the `who`th node process in flight dies."""

    who: int


@dataclass(frozen=True)
class Drain:
    """The node of the `who`th node process in flight drains (its naks lost, or not)."""

    who: int
    fault: Fault


@dataclass(frozen=True)
class KillScheduler:
    pass


@dataclass(frozen=True)
class TimerStall:
    pass


@dataclass(frozen=True)
class Lapse:
    pass


@dataclass(frozen=True)
class Resubmit:
    pass


Step = Next | Fetch | Fire | Tick | Kill | Drain | KillScheduler | TimerStall | Lapse | Resubmit
Faults = frozenset[str]
#: What can go wrong; each history draws which of them may happen in it, so that many
#: histories have but a few kinds of fault, or none.
FAULTS = (
    "bus_fails",
    "answer_lost",
    "gives_up",
    "raises",
    "kill",
    "kill_scheduler",
    "lapse",
    "unserved",
)


def node_of(world: World, who: int) -> str:
    nodes = [p.node for p in world.procs if p.node is not None]
    return nodes[who % len(nodes)]


def take(world: World, step: Step) -> None:
    match step:
        case Next(who=who, how=how):
            asks, answer = HOWS[how]
            procs = world.waiting(*asks)
            proc = procs[who % len(procs)]
            world.resume(proc, CALM[proc.asks] if how == "well" else answer)
        case Fetch(node=node):
            world.fetch(node)
        case Fire(served=served):
            world.fire(served=served)
        case Tick(seconds=seconds):
            world.tick(seconds)
        case Kill(who=who):
            world.kill(node_of(world, who))
        case Drain(who=who, fault=fault):
            world.drain(node_of(world, who), fault)
        case KillScheduler():
            world.kill_scheduler()
        case TimerStall():
            world.timer_stalls()
        case Lapse():
            world.keep_alives_lost()
        case Resubmit():
            world.resubmit()


_who = st.integers(0, 11)
#: Each step that may happen, and how often it comes up against the others.
STEPS: dict[str, tuple[int, st.SearchStrategy[Step]]] = {
    "well": (12, st.builds(Next, _who)),
    "fetch": (6, st.builds(Fetch, st.sampled_from(NODES))),
    "fire": (3, st.just(Fire())),
    "tick": (2, st.builds(Tick, st.sampled_from([0.5, 5.0, 10.0, 150.0, 300.0, 1_000.0]))),
    "resubmit": (1, st.just(Resubmit())),
    "looks": (2, st.builds(Next, _who, st.just("looks"))),
    "returns": (2, st.builds(Next, _who, st.just("returns"))),
    **{how: (2, st.builds(Next, _who, st.just(how))) for how in FAULTS if how in HOWS},
    "unserved": (2, st.just(Fire(served=False))),
    "kill": (2, st.builds(Kill, _who)),
    "drain": (1, st.builds(Drain, _who, st.sampled_from([Fault.NONE, Fault.UNDONE]))),
    "kill_scheduler": (1, st.just(KillScheduler())),
    "timer_stall": (1, st.just(TimerStall())),
    "lapse": (6, st.just(Lapse())),  # a handler's keep-alives lost
    "stall": (2, st.just(Lapse())),  # a start that took an ack_wait
}


#: The fault each step is one of; the others happen in every history.
FAULT_OF = {"stall": "lapse", "drain": "kill", "timer_stall": "kill_scheduler"}
WELL_STEPS = frozenset(name for name in STEPS if FAULT_OF.get(name, name) not in FAULTS)


@functools.cache
def one_of(names: tuple[str, ...]) -> st.SearchStrategy[Step]:
    """One of the steps `names`, as often as their weights say (`st.one_of` draws its
    branches alike, whatever their number)."""
    weighted = [name for name in names for _ in range(STEPS[name][0])]
    return st.sampled_from(weighted).flatmap(lambda name: STEPS[name][1])


def possible(world: World, faults: Faults) -> st.SearchStrategy[Step]:
    """The steps that can happen now."""
    can: dict[str, bool] = {
        "fetch": world.work_due(),
        "fire": world.timer_is_due(),
        "tick": True,
        "resubmit": True,
        **{how: bool(world.waiting(*asks)) for how, (asks, _) in HOWS.items()},
        "unserved": world.timer_is_due(),
        "kill": any(p.node is not None for p in world.procs),
        "drain": any(p.node is not None for p in world.procs),
        "kill_scheduler": world.timer is not None,
        "timer_stall": world.timer is not None,
        "lapse": world.holder is not None and world.holder.running,
        "stall": world.holder is not None and not world.holder.running,
    }
    allowed = (name for name in STEPS if FAULT_OF.get(name, name) in faults | WELL_STEPS)
    return one_of(tuple(name for name in allowed if can[name]))


@settings(max_examples=500, deadline=None)
@given(
    max_attempts=st.integers(1, 3),
    faults=st.frozensets(st.sampled_from(FAULTS)),
    steps=st.integers(0, 80),
    data=st.data(),
)
def test_any_history_of_the_design_ends_the_job_in_exactly_one_terminal_delivery(
    max_attempts: int, faults: Faults, steps: int, data: st.DataObject
) -> None:
    """One job, from its submit to its end. Checked at every step: at most one terminal
    delivery (after the client's dedupe by id), the one the record decided; no handler
    granted for a job that ended or for a delivery older than the newest granted; never
    two handlers running as one attempt; the work withdrawn only after its terminal
    delivery was stored; never more attempts granted than the limit; an attempt's end
    recorded only for the newest attempt (a result is its own); `failed` only for a
    cause (the last attempt's handler raised, an attempt was lost before its work came
    back, or no node served the kind for the grace); never `no_capacity` once an attempt
    was granted; a resubmit stores nothing. At the end, with faults over, every node
    alive and the timers left to fire: the job ended, its work is withdrawn, and its one
    terminal delivery is stored."""
    ledger = JobLedger(
        pending_timeout=PENDING_TIMEOUT_S, job_timeout=JOB_TIMEOUT_S, max_attempts=max_attempts
    )
    world = World(ledger)
    try:
        for _ in range(steps):
            if not (world.work_present or world.procs):
                break  # over: nothing can happen to the job any more
            take(world, data.draw(possible(world, faults)))
            world.check()
        world.settle()
        record = world.current().record
        assert record.state.terminal, record
        assert not world.work_present
        assert {s.id: s.delivery for s in world.session} == {JOB_TERMINAL_ID: record.ended_with}
    finally:
        note("\n".join(world.story))
