"""JobLedger, without sockets: every rule of a job's life as a row of inputs and outcome,
then the whole design around it as a model, under any history Hypothesis finds."""

from __future__ import annotations

import pytest
from hypothesis import given
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
    Succeeded,
    TimerFired,
    WithdrawJob,
)

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
