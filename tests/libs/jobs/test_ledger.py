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
    Ignore,
    JobInput,
    JobLedger,
    JobRecord,
    JobState,
    KeptAlive,
    Outcome,
    Progressed,
    ResultReceipted,
    RunHandler,
    Started,
    Succeeded,
    TimerFired,
    WithdrawJob,
)

LEDGER = JobLedger(pending_timeout=10, job_timeout=300, max_attempts=3)
#: Where the job's message sits in the jobs stream.
SEQ = 7


def new_job(at: float = 0.0) -> JobRecord:
    """A job stored at `at`, its message at `SEQ` of the jobs stream."""
    return LEDGER.submitted(
        job_id="j-1", session_id="s-1", kind="echo", trace_id="t", job_seq=SEQ, at=at
    )


def run(record: JobRecord, *steps: tuple[JobInput, float]) -> tuple[JobRecord, list[object]]:
    actions: list[object] = []
    for event, now in steps:
        outcome = LEDGER.apply(record, event, now)
        record = outcome.record
        actions.extend(outcome.actions)
    return record, actions


def test_a_job_runs_and_its_result_is_delivered_before_its_message_is_withdrawn() -> None:
    record, actions = run(
        new_job(),
        (Started(1, "node-1"), 1),
        (Progressed(1, 50), 2),
        (Succeeded(1, {"text": "hello"}), 3),
    )
    assert record.state is JobState.DONE
    assert record.ended_with == DeliverResult({"text": "hello"})
    assert actions == [
        RunHandler(),
        DeliverProgress(1, 50),
        DeliverResult({"text": "hello"}),
        WithdrawJob(SEQ),
    ]


def test_the_timer_of_a_job_nobody_started_changes_nothing_before_its_deadline() -> None:
    """So the scheduler writes no record for it: a node's start is most jobs' first write."""
    fresh = new_job()
    assert LEDGER.apply(fresh, TimerFired(), 9.9) == Outcome(fresh, (CheckAt(10),))


def test_no_node_within_the_pending_timeout_is_no_capacity() -> None:
    record, actions = run(new_job(), (TimerFired(), 9.9), (TimerFired(), 10))
    assert record.state is JobState.NO_CAPACITY
    assert actions[0] == CheckAt(10)
    assert isinstance(actions[1], DeliverError)
    assert actions[1].code == "no_capacity"
    # The client is told first; the message (no node gets its work after) goes once it is.
    assert actions[2] == WithdrawJob(SEQ)


def test_a_node_may_not_run_a_job_that_ended_or_an_attempt_a_newer_one_superseded() -> None:
    ended, _ = run(new_job(), (TimerFired(), 10))
    assert LEDGER.apply(ended, Started(1, "n"), 11).actions == (Ignore("job already no_capacity"),)
    running, _ = run(new_job(), (Started(2, "n"), 1))
    assert LEDGER.apply(running, Started(1, "n"), 2).actions == (Ignore("superseded attempt 1"),)
    assert LEDGER.apply(running, Started(3, "m"), 2).actions == (RunHandler(),)


def test_the_seed_bug_no_timeout_after_the_result_came_back() -> None:
    record, actions = run(
        new_job(), (Started(1, "n"), 1), (Succeeded(1, "ok"), 2), (TimerFired(), 10_000)
    )
    assert record.state is JobState.DONE
    assert [a for a in actions if isinstance(a, DeliverError)] == []
    # A timer that outlived the result only makes sure of its delivery, and ends.
    assert actions[-2:] == [DeliverResult("ok"), WithdrawJob(SEQ)]


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
    assert actions[-2:] == [DeliverError("failed", "boom at last"), WithdrawJob(SEQ)]


def test_silence_on_the_last_attempt_fails_the_job() -> None:
    record, actions = run(new_job(), (Started(3, "n"), 1), (TimerFired(), 301))
    assert record.state is JobState.FAILED
    assert isinstance(actions[-2], DeliverError)
    assert actions[-2].code == "failed"
    assert actions[-1] == WithdrawJob(SEQ)


def test_a_lost_attempt_nobody_took_again_fails_and_its_message_is_withdrawn() -> None:
    record, actions = run(new_job(), (Started(1, "n"), 1), (TimerFired(), 301), (TimerFired(), 311))
    assert record.state is JobState.FAILED  # not no_capacity: an attempt did start
    assert actions[-2:] == [
        DeliverError("failed", "attempt 1 was lost and no node took the job again"),
        WithdrawJob(SEQ),
    ]


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
    assert (record.state, actions) == (JobState.RUNNING, [RunHandler(), CheckAt(501)])


def test_a_keep_alive_of_an_attempt_thought_lost_has_it_running_again() -> None:
    record, _ = run(new_job(), (Started(1, "n"), 1), (TimerFired(), 301))
    assert record.state is JobState.PENDING
    record, actions = run(record, (KeptAlive(1), 302), (TimerFired(), 312))
    assert (record.state, actions) == (JobState.RUNNING, [CheckAt(602)])


def test_the_input_that_ended_a_job_asks_for_its_delivery_again() -> None:
    """The writer records an outcome before it stores the delivery; if it stopped in
    between, its input (or the job's timer) comes again, and so does the delivery."""
    done, _ = run(new_job(), (Started(1, "n"), 1), (Succeeded(1, "ok"), 2))
    again = (DeliverResult("ok"), WithdrawJob(SEQ))
    assert LEDGER.apply(done, Succeeded(1, "ok"), 3) == Outcome(done, again)
    assert LEDGER.apply(done, TimerFired(), 3) == Outcome(done, again)
    failed, _ = run(new_job(), (Started(3, "n"), 1), (AttemptFailed(3, "boom"), 2))
    assert LEDGER.apply(failed, AttemptFailed(3, "boom"), 3).actions == (
        DeliverError("failed", "boom"),
        WithdrawJob(SEQ),
    )
    no_capacity, [_check, error, withdrawal] = run(new_job(), (TimerFired(), 9), (TimerFired(), 10))
    assert LEDGER.apply(no_capacity, TimerFired(), 11) == Outcome(no_capacity, (error, withdrawal))


def test_only_the_input_that_ended_a_job_asks_for_its_delivery_again() -> None:
    silent, _ = run(new_job(), (Started(3, "n"), 1), (TimerFired(), 301))
    late = LEDGER.apply(silent, AttemptFailed(3, "boom"), 302)
    assert late.actions == (Ignore("job already failed"),)
    assert LEDGER.apply(silent, Succeeded(3, "late"), 302).actions == (
        Ignore("job already failed"),
    )
    done, _ = run(new_job(), (Started(1, "n"), 1), (Succeeded(1, "ok"), 2))
    assert LEDGER.apply(done, Succeeded(1, "other"), 3).actions == (Ignore("job already done"),)
    # Once the client acked the delivery, it was stored: nothing asks for it again, and a
    # timer left over only withdraws the message.
    acked, _ = run(done, (ResultReceipted("delivered"), 3))
    assert LEDGER.apply(acked, Succeeded(1, "ok"), 4).actions == (Ignore("job already done"),)
    assert LEDGER.apply(acked, TimerFired(), 4).actions == (WithdrawJob(SEQ),)


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
    st.builds(ResultReceipted, outcome=st.sampled_from(["delivered", "expired"])),
)


@given(st.lists(st.tuples(events, st.floats(0, 500)), max_size=30))
def test_any_history_ends_in_at_most_one_terminal_delivery(
    steps: list[tuple[JobInput, float]],
) -> None:
    """At most one, asked for again only as itself (a repeat the store dedupes by its id),
    never a handler run for an ended job or a superseded attempt, and the message withdrawn
    only after its terminal delivery."""
    record = new_job()
    now = 0.0
    terminal: list[object] = []
    newest_attempt = 0
    for event, dt in steps:
        now += dt
        before = record
        outcome = LEDGER.apply(record, event, now)
        record = outcome.record
        for i, action in enumerate(outcome.actions):
            if isinstance(action, DeliverResult | DeliverError):
                terminal.append(action)
                assert record.state.terminal
                assert record.ended_with == action
            if isinstance(action, DeliverResult):
                assert isinstance(event, Succeeded | TimerFired)
                if isinstance(event, Succeeded):
                    assert event.attempt >= newest_attempt, "a superseded result was delivered"
            if isinstance(action, RunHandler):
                assert isinstance(event, Started)
                assert not before.state.terminal
                assert event.attempt >= newest_attempt, "a superseded attempt was run"
            if isinstance(action, CheckAt):
                assert action.at >= now
            if isinstance(action, WithdrawJob):
                assert record.state.terminal
                delivered = any(
                    isinstance(a, DeliverResult | DeliverError) for a in outcome.actions[:i]
                )
                assert delivered or record.receipt is not None, "withdrawn before it was told"
        if before.state.terminal:  # nothing changes but the receipt
            assert record.model_copy(update={"receipt": before.receipt}) == before
        if isinstance(event, AttemptInput) and not before.state.terminal:
            newest_attempt = max(newest_attempt, event.attempt)
    assert all(t == terminal[0] for t in terminal), "two different terminal deliveries"
    assert record.state.terminal == bool(terminal)


def test_a_record_an_older_version_wrote_without_submitted_at_is_still_read() -> None:
    older = new_job().model_dump(exclude={"submitted_at"})
    assert "submitted_at" not in older
    assert JobRecord.model_validate(older).submitted_at is None
