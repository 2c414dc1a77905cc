"""JobLedger, without sockets: every rule of a job's life as a row of input and outcome."""

from hypothesis import given
from hypothesis import strategies as st

from ackwire.jobs.ledger import (
    AttemptFailed,
    AttemptInput,
    CheckAt,
    DeliverError,
    DeliverProgress,
    DeliverResult,
    DispatchWork,
    Ignore,
    JobInput,
    JobLedger,
    JobRecord,
    JobState,
    KeptAlive,
    Outcome,
    Progressed,
    ResultReceipted,
    Started,
    Succeeded,
    TimerFired,
    WithdrawWork,
    WorkDispatched,
)

LEDGER = JobLedger(pending_timeout=10, job_timeout=300, max_attempts=3)


def submitted(now: float = 0.0) -> JobRecord:
    outcome = LEDGER.submitted(job_id="j-1", session_id="s-1", kind="echo", trace_id="t", now=now)
    assert outcome.actions == (DispatchWork(), CheckAt(now + 10))
    return outcome.record


def new_job(now: float = 0.0) -> JobRecord:
    """A job submitted at `now`, its work stored for nodes."""
    outcome = LEDGER.apply(submitted(now), WorkDispatched(seq=7), now)
    assert outcome.actions == ()
    return outcome.record


def run(record: JobRecord, *steps: tuple[JobInput, float]) -> tuple[JobRecord, list[object]]:
    actions: list[object] = []
    for event, now in steps:
        outcome = LEDGER.apply(record, event, now)
        record = outcome.record
        actions.extend(outcome.actions)
    return record, actions


def test_a_job_runs_and_its_result_is_delivered() -> None:
    record, actions = run(
        new_job(),
        (Started(1, "node-1"), 1),
        (Progressed(1, 50), 2),
        (Succeeded(1, {"text": "hello"}), 3),
    )
    assert record.state is JobState.DONE
    assert actions == [CheckAt(301), DeliverProgress(1, 50), DeliverResult({"text": "hello"})]


def test_no_node_within_the_pending_timeout_is_no_capacity() -> None:
    record, actions = run(new_job(), (TimerFired(), 9.9), (TimerFired(), 10))
    assert record.state is JobState.NO_CAPACITY
    assert actions[0] == CheckAt(10)
    # The work goes before the client is told: no node may run a job it was told did not run.
    assert actions[1] == WithdrawWork(7)
    assert isinstance(actions[2], DeliverError)
    assert actions[2].code == "no_capacity"


def test_the_seed_bug_no_timeout_after_the_result_came_back() -> None:
    record, actions = run(
        new_job(), (Started(1, "n"), 1), (Succeeded(1, "ok"), 2), (TimerFired(), 10_000)
    )
    assert record.state is JobState.DONE
    assert [a for a in actions if isinstance(a, DeliverError)] == []
    assert actions[-1] == Ignore("job already done")


def test_a_silent_node_hands_the_job_to_the_next_attempt() -> None:
    record, actions = run(new_job(), (Started(1, "node-1"), 1), (TimerFired(), 301))
    assert record.state is JobState.PENDING
    assert actions[-1] == CheckAt(311)
    record, actions = run(record, (Started(2, "node-2"), 305), (Succeeded(2, "ok"), 306))
    assert record.state is JobState.DONE
    assert record.node == "node-2"


def test_a_late_result_from_a_superseded_attempt_is_dropped() -> None:
    _record, actions = run(
        new_job(),
        (Started(1, "slow"), 1),
        (Started(2, "fast"), 302),
        (Succeeded(1, "late"), 303),
        (Succeeded(2, "ok"), 304),
        (Succeeded(2, "ok"), 305),
    )
    delivered = [a for a in actions if isinstance(a, DeliverResult)]
    # The second "ok" is the winning report again: the same delivery, which the store dedupes.
    assert delivered == [DeliverResult("ok"), DeliverResult("ok")]
    assert Ignore("superseded attempt 1") in actions


def test_a_raising_handler_is_a_failed_attempt_until_the_last() -> None:
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
    assert actions[-1] == DeliverError("failed", "boom at last")


def test_silence_on_the_last_attempt_fails_the_job() -> None:
    record, actions = run(new_job(), (Started(3, "n"), 1), (TimerFired(), 301))
    assert record.state is JobState.FAILED
    assert isinstance(actions[-1], DeliverError)
    assert actions[-1].code == "failed"


def test_a_lost_attempt_nobody_took_again_has_its_work_withdrawn() -> None:
    _record, actions = run(
        new_job(), (Started(1, "n"), 1), (TimerFired(), 301), (TimerFired(), 311)
    )
    assert actions[-2:] == [
        WithdrawWork(7),
        DeliverError("failed", "attempt 1 was lost and no node took the job again"),
    ]


def test_work_stored_after_a_timer_ended_the_job_is_withdrawn() -> None:
    ended, _ = run(submitted(), (TimerFired(), 10))
    record, actions = run(ended, (WorkDispatched(seq=4), 11))
    assert (record.state, actions) == (JobState.NO_CAPACITY, [WithdrawWork(4)])
    assert run(record, (TimerFired(), 12))[1][0] == WithdrawWork(4)  # and again, if asked


def test_a_node_may_not_run_work_of_a_job_that_ended_or_moved_on() -> None:
    record = new_job()
    assert record.refuses(1) is None
    running, _ = run(record, (Started(2, "n"), 1))
    assert running.refuses(1) == "superseded attempt 1"
    assert running.refuses(3) is None
    ended, _ = run(record, (TimerFired(), 10))
    assert ended.refuses(1) == "job already no_capacity"


def test_progress_keeps_a_long_job_alive() -> None:
    record, actions = run(
        new_job(),
        (Started(1, "n"), 1),
        (Progressed(1, 10), 290),
        (TimerFired(), 301),
        (Progressed(1, 90), 580),
        (TimerFired(), 591),
    )
    assert record.state is JobState.RUNNING
    assert actions[-1] == CheckAt(880)


def test_the_nodes_keep_alive_keeps_a_long_job_alive_without_progress() -> None:
    record, actions = run(
        new_job(),
        (Started(1, "n"), 1),
        (KeptAlive(1), 101),
        (KeptAlive(1), 201),
        (TimerFired(), 301),
    )
    assert (record.state, actions) == (JobState.RUNNING, [CheckAt(301), CheckAt(501)])


def test_a_keep_alive_of_an_attempt_thought_lost_has_it_running_again() -> None:
    record, _ = run(new_job(), (Started(1, "n"), 1), (TimerFired(), 301))
    assert record.state is JobState.PENDING
    record, actions = run(record, (KeptAlive(1), 302), (TimerFired(), 312))
    assert (record.state, actions) == (JobState.RUNNING, [CheckAt(602)])


def test_a_lost_attempt_nobody_retries_ends_failed_not_no_capacity() -> None:
    record, _actions = run(
        new_job(), (Started(1, "n"), 1), (TimerFired(), 301), (TimerFired(), 311)
    )
    assert record.state is JobState.FAILED


def test_a_job_whose_work_the_store_did_not_confirm_is_dispatched_again_by_its_timer() -> None:
    record, actions = run(submitted(), (TimerFired(), 0.5))
    assert actions == [DispatchWork(), CheckAt(10)]
    record, actions = run(record, (WorkDispatched(seq=3), 0.6), (TimerFired(), 1))
    assert (record.work_seq, actions) == (3, [CheckAt(10)])
    # Once an attempt started, the work is JetStream's to redeliver: never dispatched again.
    record, actions = run(submitted(), (Started(1, "n"), 1), (AttemptFailed(1, "boom"), 2))
    assert DispatchWork() not in run(record, (TimerFired(), 3))[1]


def test_the_input_that_ended_a_job_asks_for_its_delivery_again() -> None:
    """The scheduler records an outcome before it stores the delivery; if it stopped in
    between, the input comes again, and so does the delivery (the store dedupes it)."""
    done, _ = run(new_job(), (Started(1, "n"), 1), (Succeeded(1, "ok"), 2))
    assert LEDGER.apply(done, Succeeded(1, "ok"), 3) == Outcome(done, (DeliverResult("ok"),))
    failed, _ = run(new_job(), (Started(3, "n"), 1), (AttemptFailed(3, "boom"), 2))
    assert LEDGER.apply(failed, AttemptFailed(3, "boom"), 3).actions == (
        DeliverError("failed", "boom"),
    )
    no_capacity, [*_, error] = run(new_job(), (TimerFired(), 10))
    repeat = Outcome(no_capacity, (WithdrawWork(7), error))
    assert LEDGER.apply(no_capacity, TimerFired(), 11) == repeat


def test_only_the_input_that_ended_a_job_asks_for_its_delivery_again() -> None:
    failed, _ = run(new_job(), (Started(3, "n"), 1), (AttemptFailed(3, "boom"), 2))
    assert LEDGER.apply(failed, TimerFired(), 300).actions == (Ignore("job already failed"),)
    silent, _ = run(new_job(), (Started(3, "n"), 1), (TimerFired(), 301))
    late = LEDGER.apply(silent, AttemptFailed(3, "boom"), 302)
    assert late.actions == (Ignore("job already failed"),)
    done, _ = run(new_job(), (Started(1, "n"), 1), (Succeeded(1, "ok"), 2))
    assert LEDGER.apply(done, TimerFired(), 300).actions == (Ignore("job already done"),)
    # Once the client acked the delivery, it was stored: nothing asks for it again.
    acked, _ = run(done, (ResultReceipted("delivered"), 3))
    assert LEDGER.apply(acked, Succeeded(1, "ok"), 4).actions == (Ignore("job already done"),)


def result_of(attempt: int) -> Succeeded:
    """An attempt's one result: a report that comes again is the same report."""
    return Succeeded(attempt, f"result of {attempt}")


events = st.one_of(
    st.builds(Started, attempt=st.integers(1, 4), node=st.sampled_from(["a", "b"])),
    st.builds(Progressed, attempt=st.integers(1, 4), percent=st.floats(0, 100)),
    st.builds(KeptAlive, attempt=st.integers(1, 4)),
    st.integers(1, 4).map(result_of),
    st.builds(AttemptFailed, attempt=st.integers(1, 4), message=st.just("x")),
    st.builds(TimerFired),
    st.builds(WorkDispatched, seq=st.integers(1, 3)),
)


@given(st.lists(st.tuples(events, st.floats(0, 500)), max_size=30))
def test_any_history_ends_in_at_most_one_terminal_delivery(
    steps: list[tuple[JobInput, float]],
) -> None:
    """At most one, asked for again only as itself (a repeat the store dedupes by its id)."""
    record = submitted()
    now = 0.0
    terminal: list[object] = []
    withdrawn: set[int] = set()
    newest_attempt = 0
    for event, dt in steps:
        now += dt
        before = record
        outcome = LEDGER.apply(record, event, now)
        record = outcome.record
        for action in outcome.actions:
            if isinstance(action, DeliverResult | DeliverError):
                terminal.append(action)
                assert record.state.terminal
            if isinstance(action, DeliverResult):
                assert isinstance(event, Succeeded)
                assert event.attempt >= newest_attempt, "a superseded result was delivered"
            if isinstance(action, CheckAt):
                assert action.at >= now
            if isinstance(action, DispatchWork):
                assert (before.state, before.attempt, before.work_seq) == (
                    JobState.PENDING,
                    0,
                    None,
                )
            if isinstance(action, WithdrawWork):
                assert record.state.terminal
                withdrawn.add(action.seq)
        if before.state.terminal:  # nothing changes, but where its work was stored is noted
            assert record.model_copy(update={"work_seq": before.work_seq}) == before
        if isinstance(event, AttemptInput) and not before.state.terminal:
            newest_attempt = max(newest_attempt, event.attempt)
    assert all(t == terminal[0] for t in terminal), "two different terminal deliveries"
    assert record.state.terminal == bool(terminal)
    if record.timed_out is not None and record.work_seq is not None:
        assert record.work_seq in withdrawn, "a timer ended the job and left its work for nodes"
