"""protocol.md, Jobs, end to end: gateway, scheduler and node on a real NATS, a real WebSocket."""

import asyncio
from collections import defaultdict
from collections.abc import Callable

import nats
import pytest
from nats.js.errors import NotFoundError
from pydantic import JsonValue
from websockets.asyncio.client import ClientConnection

from ackwire.bus import provision, subjects
from ackwire.bus.embedded import EmbeddedNats
from ackwire.node import worker
from ackwire.node.demo_kinds import DEMO_KINDS, AnyObject, SleepPayload, Slept
from ackwire.nodekit import JobContext, JobKind
from ackwire.wire import encode
from ackwire.wire.codes import ErrorCode
from ackwire.wire.frames import Accepted, Ack, Deliver, Error, Submit
from support.client import receive, send, welcomed
from support.logs import LogWatch

from .conftest import Stack, StartStack

MakeToken = Callable[..., str]


class JobClient:
    """A raw WebSocket client that answers submits and files every delivery by job, acked."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.by_job: dict[str | None, list[Deliver]] = defaultdict(list)
        self._answers: dict[str | None, Accepted | Error] = {}

    async def submit(self, frame: Submit, timeout: float = 5) -> Accepted | Error:
        await send(self.ws, frame)
        return await self.answer(frame, timeout)

    async def answer(self, frame: Submit, timeout: float = 5) -> Accepted | Error:
        """The answer to `frame` (a connection's submits are answered as each is stored,
        so not necessarily in the order they were sent)."""
        while frame.ref not in self._answers:
            answer = await receive(self.ws, timeout=timeout)
            if isinstance(answer, Deliver):
                await self._file(answer)
                continue
            assert isinstance(answer, Accepted | Error), answer
            self._answers[answer.ref] = answer
        return self._answers.pop(frame.ref)

    async def until_terminal(self, job_id: str, timeout: float = 15) -> list[Deliver]:
        """Every deliver for `job_id`, up to its result or error."""
        while not any(d.kind in {"result", "error"} for d in self.by_job[job_id]):
            frame = await receive(self.ws, timeout=timeout)
            assert isinstance(frame, Deliver), frame
            await self._file(frame)
        return self.by_job[job_id]

    async def _file(self, frame: Deliver) -> None:
        await send(self.ws, Ack(seq=frame.seq))
        self.by_job[frame.job_id].append(frame)


async def connect(url: str, token: str) -> JobClient:
    ws, _ = await welcomed(url, token)
    return JobClient(ws)


async def test_an_echo_job_is_accepted_run_and_its_result_delivered(
    stack: Stack, make_token: MakeToken, logs: LogWatch
) -> None:
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="c-1", kind="echo", payload={"a": [1, "二"]}))
    assert isinstance(accepted, Accepted)
    [result] = await client.until_terminal(accepted.job_id)
    assert (result.kind, result.id, result.data) == (
        "result",
        f"{accepted.job_id}:result",
        {"a": [1, "二"]},
    )
    delivered = await logs.wait_for("delivery.delivered", job_id=accepted.job_id)
    # One grep of the trace id tells the job's story, each line saying where it happened.
    story = [e for e in logs.events if e.get("trace_id") == delivered["trace_id"]]
    steps = {e["event"]: e for e in story}
    assert steps["job.accepted"]["gateway"] == "gw-t"
    assert steps["job.attempt_started"]["node"] == "node-t"
    # The node decides the job and stores its result for the session itself: the
    # scheduler is not on the way.
    assert (steps["job.state"]["state"], steps["job.state"]["node"]) == ("done", "node-t")
    assert steps["delivery.delivered"]["gateway"] == "gw-t"
    assert not [e for e in story if "scheduler" in e]
    assert all(e["job_id"] == accepted.job_id for e in story)
    assert all(e.get("session_id") == delivered["session_id"] for e in story if "gateway" in e)
    await client.ws.close()


async def test_translate_uses_the_phrase_table(stack: Stack, make_token: MakeToken) -> None:
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(
        Submit(
            ref="c-1", kind="translate", payload={"text": "你好", "source": "zh", "target": "en"}
        ),
    )
    assert isinstance(accepted, Accepted)
    [result] = await client.until_terminal(accepted.job_id)
    assert result.data == {"text": "hello", "source": "zh", "target": "en"}
    await client.ws.close()


async def test_a_kind_no_node_serves_is_no_such_kind(stack: Stack, make_token: MakeToken) -> None:
    client = await connect(stack.gateway.url, make_token())
    answer = await client.submit(Submit(ref="c-9", kind="teleport", payload={}))
    assert isinstance(answer, Error)
    assert answer.code is ErrorCode.NO_SUCH_KIND
    await client.ws.close()


async def test_a_payload_against_the_kinds_schema_is_bad_payload(
    stack: Stack, make_token: MakeToken
) -> None:
    client = await connect(stack.gateway.url, make_token())
    answer = await client.submit(Submit(ref="c-2", kind="translate", payload={"text": 5}))
    assert isinstance(answer, Error)
    assert answer.code is ErrorCode.BAD_PAYLOAD
    assert "text" in answer.message or "required" in answer.message
    await client.ws.close()


async def test_the_same_idempotency_key_is_the_same_job_run_once(
    stack: Stack, make_token: MakeToken, logs: LogWatch
) -> None:
    client = await connect(stack.gateway.url, make_token())
    frames = [
        Submit(ref=f"c-{i}", kind="echo", payload={"i": 1}, idempotency_key="k-1") for i in range(3)
    ]
    for frame in frames[:2]:  # two in flight at once, before any answer
        await send(client.ws, frame)
    answers = [await client.answer(frame) for frame in frames[:2]]
    answers.append(await client.submit(frames[2]))
    job_ids = {a.job_id for a in answers if isinstance(a, Accepted)}
    assert len(job_ids) == 1
    [job_id] = job_ids
    results = await client.until_terminal(job_id)
    assert [r.kind for r in results] == ["result"]
    await logs.wait_for("delivery.delivered", job_id=job_id)
    assert len(logs.named("job.attempt_started", job_id=job_id)) == 1
    await client.ws.close()


async def test_a_sleep_job_reports_progress_before_its_result(
    stack: Stack, make_token: MakeToken
) -> None:
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="c-1", kind="sleep", payload={"seconds": 1.2}))
    assert isinstance(accepted, Accepted)
    seen = await client.until_terminal(accepted.job_id)
    assert seen[0].kind == "progress"
    assert 0 <= seen[0].data["percent"] <= 100  # type: ignore[index,call-overload]
    assert seen[-1].kind == "result"
    assert seen[-1].data == {"slept": 1.2}
    assert [d.seq for d in seen] == sorted(d.seq for d in seen)
    await client.ws.close()


async def test_a_handler_that_raises_fails_each_attempt_then_the_job(
    stack: Stack, make_token: MakeToken, logs: LogWatch
) -> None:
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="c-1", kind="fail", payload={"message": "kaputt"}))
    assert isinstance(accepted, Accepted)
    [error] = await client.until_terminal(accepted.job_id)
    assert error.kind == "error"
    assert error.data["code"] == "failed"  # type: ignore[index,call-overload]
    assert "kaputt" in error.data["message"]  # type: ignore[index,operator]
    attempts = logs.named("job.attempt_failed", job_id=accepted.job_id)
    assert len(attempts) == stack.settings.max_attempts
    await client.ws.close()


def _frame_bytes(frame: Deliver | Submit) -> int:
    return len(encode(frame).encode())


async def test_a_result_larger_than_clients_accept_fails_the_attempts_saying_so(
    stack: Stack, make_token: MakeToken, logs: LogWatch
) -> None:
    """An echo of the largest payload a client may submit: its `deliver` frame, with the
    job id twice, is larger than `max_frame_bytes`, so no client could ever receive it."""
    limit = stack.settings.max_frame_bytes
    room = limit - _frame_bytes(Submit(ref="c-1", kind="echo", payload={"text": ""}))
    submit = Submit(ref="c-1", kind="echo", payload={"text": "x" * room})
    assert _frame_bytes(submit) == limit
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(submit)
    assert isinstance(accepted, Accepted)
    [error] = await client.until_terminal(accepted.job_id)
    assert error.kind == "error"
    assert error.data["code"] == "failed"  # type: ignore[index,call-overload]
    message = error.data["message"]  # type: ignore[index,call-overload]
    assert "the result is too large" in message
    assert f"clients accept at most {limit} (max_frame_bytes)" in message
    assert _frame_bytes(error) <= limit
    attempts = logs.named("job.attempt_failed", job_id=accepted.job_id)
    assert len(attempts) == stack.settings.max_attempts
    await client.ws.close()


async def test_a_huge_failure_message_is_cut_short_so_its_error_can_be_delivered(
    stack: Stack, make_token: MakeToken
) -> None:
    limit = stack.settings.max_frame_bytes
    room = limit - _frame_bytes(Submit(ref="c-1", kind="fail", payload={"message": ""}))
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="c-1", kind="fail", payload={"message": "y" * room}))
    assert isinstance(accepted, Accepted)
    [error] = await client.until_terminal(accepted.job_id)
    assert _frame_bytes(error) <= limit
    message = error.data["message"]  # type: ignore[index,call-overload]
    assert message.startswith("yyy")
    assert message.endswith("…")
    await client.ws.close()


class Tally:
    """A job kind whose every run is noted: a side effect a test can count. With `hold`,
    each run waits for it before it returns."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.ran: list[dict[str, JsonValue]] = []
        self.hold = hold
        self.kind = JobKind("tally", AnyObject, self._run)

    async def _run(self, payload: AnyObject, _job: JobContext) -> AnyObject:
        self.ran.append(payload.root)
        if self.hold is not None:
            await self.hold.wait()
        return payload


async def test_no_node_with_room_in_the_pending_timeout_is_no_capacity_and_never_runs_later(
    start_stack: StartStack, make_token: MakeToken, logs: LogWatch
) -> None:
    tally = Tally()
    stack = await start_stack(kinds={"sleep": DEMO_KINDS["sleep"], "tally": tally.kind}, capacity=1)
    client = await connect(stack.gateway.url, make_token())
    seconds = stack.settings.pending_timeout_s + 1.5
    busy = await client.submit(Submit(ref="b", kind="sleep", payload={"seconds": seconds}))
    assert isinstance(busy, Accepted)
    await logs.wait_for("job.attempt_started", job_id=busy.job_id)  # the only slot is taken
    waiting = await client.submit(Submit(ref="c", kind="tally", payload={"n": 1}))
    assert isinstance(waiting, Accepted)
    [error] = await client.until_terminal(waiting.job_id)
    assert error.kind == "error"
    assert error.data["code"] == "no_capacity"  # type: ignore[index,call-overload]
    finished = await client.until_terminal(busy.job_id)
    assert finished[-1].kind == "result"  # the running job is not disturbed

    # Room now. The node takes a kind's work in the order it was stored, so once a later
    # job of the kind is done, the node has passed the no_capacity job's work, if any.
    later = await client.submit(Submit(ref="d", kind="tally", payload={"n": 2}))
    assert isinstance(later, Accepted)
    [result] = await client.until_terminal(later.job_id)
    assert result.kind == "result"
    assert tally.ran == [{"n": 2}], "the client was told no_capacity, and the job ran anyway"
    assert not logs.named("job.attempt_started", job_id=waiting.job_id)
    await client.ws.close()


async def test_submitting_too_fast_is_rate_limited(stack: Stack, make_token: MakeToken) -> None:
    client = await connect(stack.gateway.url, make_token())
    answers = [
        await client.submit(Submit(ref=f"c-{i}", kind="echo", payload={}))
        for i in range(stack.settings.submit_burst + 1)
    ]
    assert all(isinstance(a, Accepted) for a in answers[:-1])
    assert isinstance(answers[-1], Error)
    assert answers[-1].code is ErrorCode.RATE_LIMITED
    await client.ws.close()


async def test_the_seed_bug_no_timeout_for_a_job_whose_result_came_back(
    stack: Stack, make_token: MakeToken, logs: LogWatch
) -> None:
    """The seeds' "Job dispatched timeout" logged after the result had returned: once the
    result is stored, the job's message (its timer too) is gone, so no timer can fire."""
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="c-1", kind="echo", payload={}))
    assert isinstance(accepted, Accepted)
    await client.until_terminal(accepted.job_id)
    withdrawn = await logs.wait_for("job.withdrawn", job_id=accepted.job_id)
    nc = await nats.connect(stack.settings.nats_url)
    try:
        with pytest.raises(NotFoundError):
            await nc.jetstream().get_msg(subjects.JOBS_STREAM, withdrawn["seq"])
    finally:
        await nc.close()
    assert not [
        e for e in logs.events if e.get("job_id") == accepted.job_id and "timeout" in str(e)
    ]
    assert [d.kind for d in client.by_job[accepted.job_id]] == ["result"]
    await client.ws.close()


async def test_a_submit_the_store_cannot_confirm_is_unavailable(
    nats_server: EmbeddedNats, stack: Stack, make_token: MakeToken
) -> None:
    client = await connect(stack.gateway.url, make_token())
    await nats_server.stop()
    answer = await client.submit(Submit(ref="c-1", kind="echo", payload={}), timeout=15)
    assert isinstance(answer, Error)
    assert answer.code is ErrorCode.UNAVAILABLE
    assert answer.ref == "c-1"
    await client.ws.close()


async def _sleep_quietly(payload: SleepPayload, _job: JobContext) -> Slept:
    """A long job that reports no progress: only the node's keep-alive says it lives."""
    await asyncio.sleep(payload.seconds)
    return Slept(slept=payload.seconds)


@pytest.mark.parametrize("kind", ["sleep", "quiet"])
async def test_a_job_longer_than_the_job_timeout_is_kept_alive_by_its_node(
    kind: str, start_stack: StartStack, make_token: MakeToken, logs: LogWatch
) -> None:
    """`sleep` reports progress; `quiet` reports nothing until its result, so only the node's
    keep-alive tells the ledger it lives (past the job timeout and a pending timeout more)."""
    quiet = JobKind("quiet", SleepPayload, _sleep_quietly)
    stack = await start_stack(kinds={"sleep": DEMO_KINDS["sleep"], "quiet": quiet})
    client = await connect(stack.gateway.url, make_token())
    seconds = stack.settings.job_timeout_s + stack.settings.pending_timeout_s + 1.5
    accepted = await client.submit(Submit(ref="c-1", kind=kind, payload={"seconds": seconds}))
    assert isinstance(accepted, Accepted)
    seen = await client.until_terminal(accepted.job_id, timeout=seconds + 10)
    assert [d.kind for d in seen if d.kind != "progress"] == ["result"]
    assert seen[-1].data == {"slept": seconds}
    assert len(logs.named("job.attempt_started", job_id=accepted.job_id)) == 1  # never re-run
    await client.ws.close()


async def test_the_same_key_past_the_stores_duplicate_window_is_the_same_job_run_once(
    start_stack: StartStack, make_token: MakeToken, logs: LogWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDKs resend an unanswered submit with its key however late. Past JetStream's
    duplicate window (two minutes; a second here) the resubmit of a job still running
    must be answered with its id and run nothing (issue 18, finding 2); before, it was
    stored again and granted as the same attempt while the first ran."""
    monkeypatch.setattr(provision, "_dedupe_window", lambda _settings: 1.0)
    tally = Tally(hold=asyncio.Event())
    stack = await start_stack(kinds={"tally": tally.kind})
    client = await connect(stack.gateway.url, make_token())
    frame = Submit(ref="a", kind="tally", payload={"n": 1}, idempotency_key="k-1")
    first = await client.submit(frame)
    assert isinstance(first, Accepted)
    await logs.wait_for("job.attempt_started", job_id=first.job_id)
    await asyncio.sleep(3)  # not a synchronisation: the window must pass
    again = await client.submit(frame.model_copy(update={"ref": "b"}))
    assert again == Accepted(ref="b", job_id=first.job_id)
    tally.hold.set()
    assert (await client.until_terminal(first.job_id))[-1].kind == "result"
    # The node takes a kind's work in the order it was stored: once a later job of the
    # kind is done, the node has passed any work the resubmit could have stored.
    later = await client.submit(Submit(ref="c", kind="tally", payload={"n": 2}))
    assert isinstance(later, Accepted)
    assert (await client.until_terminal(later.job_id))[-1].kind == "result"
    assert tally.ran == [{"n": 1}, {"n": 2}], "the same key ran twice"
    assert [d.kind for d in client.by_job[first.job_id]] == ["result"]
    await client.ws.close()


async def test_a_node_runs_as_many_jobs_of_one_kind_at_once_as_it_has_slots(
    start_stack: StartStack, make_token: MakeToken, logs: LogWatch
) -> None:
    """Slots are the node's, not a kind's: the node's other kinds, idle, waiting for work,
    must not keep them from the one kind that has work."""
    stack = await start_stack(capacity=3)  # four kinds
    client = await connect(stack.gateway.url, make_token())
    jobs = []
    for ref in "abc":
        accepted = await client.submit(Submit(ref=ref, kind="sleep", payload={"seconds": 4}))
        assert isinstance(accepted, Accepted)
        jobs.append(accepted.job_id)
    for job_id in jobs:
        await logs.wait_for("job.attempt_started", job_id=job_id, timeout=10)
    assert not logs.named("job.state", state="done"), "a job waited for another to end"
    for job_id in jobs:
        assert (await client.until_terminal(job_id))[-1].kind == "result"
    await client.ws.close()


async def test_work_that_waits_for_a_slot_keeps_its_attempt(
    start_stack: StartStack, make_token: MakeToken, logs: LogWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot, two kinds, both pulls waiting at the server: a job of each arrives at
    once, and the one that finds the slot taken waits for it in hand. It runs as its
    first attempt: waiting spends none of its attempts (there are 2 here)."""
    # A pull whose wait ran out while the slot is taken asks again only once it is free:
    # one running out between the two jobs' arrivals would leave nothing waiting in hand.
    monkeypatch.setattr(worker, "_FETCH_WAIT_S", 30.0)
    stack = await start_stack(capacity=1)
    client = await connect(stack.gateway.url, make_token())
    # Shorter than the pending timeout (2 s), which the waiting job must not reach.
    frames = [
        Submit(ref="s", kind="sleep", payload={"seconds": 1}),
        Submit(ref="e", kind="echo", payload={"n": 1}),
    ]
    jobs = []
    for frame in frames:
        accepted = await client.submit(frame)
        assert isinstance(accepted, Accepted)
        jobs.append(accepted.job_id)
    waited = await logs.wait_for("job.waiting_for_slot")
    assert waited["job_id"] in jobs
    for job_id in jobs:
        assert (await client.until_terminal(job_id))[-1].kind == "result"
        started = await logs.wait_for("job.attempt_started", job_id=job_id)
        assert started["attempt"] == 1
    await client.ws.close()


#: A retention short enough for a record to outlive it within a test.
RETENTION_S = 3.0


async def test_a_job_that_outlives_its_record_ends_its_attempt_without_looping(
    nats_server: EmbeddedNats, start_stack: StartStack, make_token: MakeToken, logs: LogWatch
) -> None:
    """Issue 18, finding 9: a record that outlived the retention was read as "no record"
    (its expiry marker), and the attempt's end looped on a record it could never write.
    Now the end sees the record expired, says so once, and stops."""
    tally = Tally(hold=asyncio.Event())
    stack = await start_stack(kinds={"tally": tally.kind}, retention_s=RETENTION_S)
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="a", kind="tally", payload={"n": 1}))
    assert isinstance(accepted, Accepted)
    await logs.wait_for("job.attempt_started", job_id=accepted.job_id)
    nc = await nats.connect(nats_server.url)
    try:
        record = subjects.record_subject("tally", accepted.job_id)
        async with asyncio.timeout(RETENTION_S + 10):
            while True:  # JetStream expires it on its own clock: look until it is gone
                try:
                    await nc.jetstream().get_msg(subjects.JOBS_STREAM, subject=record)
                except NotFoundError:
                    break
                await asyncio.sleep(0.2)
    finally:
        await nc.close()
    tally.hold.set()
    expired = await logs.wait_for("job.record_expired", job_id=accepted.job_id)
    assert expired["input"] == "Succeeded"
    assert not logs.named("job.attempt_unreported", job_id=accepted.job_id)
    assert len(logs.named("job.record_expired", job_id=accepted.job_id)) == 1
    await client.ws.close()
