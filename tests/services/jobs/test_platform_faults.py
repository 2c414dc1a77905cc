"""Issue 18: the platform's faults on a job's way, each forced once at the nats-py boundary
(or by killing a real process), end to end through a gateway's WebSocket. Each fails on
the job path before the redesign, and shows what the redesign does instead.

A fault is injected into a call both designs make: the first write of a job's record is a
publish to `$KV.ackwire_jobs.<job>` in the old design and to `ackwire.jobs.record.…` in
the new; a nak is a plain publish (`Msg.nak`) in the old, a request in the new.
"""

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedCluster, EmbeddedNats
from ackwire.bus.models import Delivery
from ackwire.bus.session_queue import SessionQueue
from ackwire.errors import BusUnavailableError
from ackwire.node.demo_kinds import DEMO_KINDS, AnyObject, SleepPayload, Slept
from ackwire.nodekit import JobContext, JobKind
from ackwire.wire.frames import Accepted, Ping, Pong, Submit
from support.client import receive, send
from support.logs import LogWatch

from .conftest import Stack, StartStack
from .test_failover import first_to_log, start_node
from .test_jobs import JobClient, Tally, _sleep_quietly, connect

MakeToken = Callable[..., str]


def is_record(subject: str) -> bool:
    """A job's record: a key of the old design's jobs bucket, or the new record subject."""
    return subject.startswith("$KV.ackwire_jobs.") or subject.startswith("ackwire.jobs.record.")


class Fault:
    """Breaks calls of nats-py (or ackwire) methods: a call that `matches` while the fault
    is on fails with the method's `error` before it reaches the server (`landed`: after
    it did), or, with no `error`, is dropped unsent. It turns itself off after `times`
    calls broken (None: never by itself)."""

    def __init__(
        self, matches: Callable[..., bool], *, times: int | None = 1, landed: bool = False
    ) -> None:
        self.matches = matches
        self.times = times
        self.landed = landed
        self.on = True
        self.hits = 0
        self.hit = asyncio.Event()

    def breaks(
        self,
        monkeypatch: pytest.MonkeyPatch,
        owner: type,
        method: str,
        error: Exception | None = None,
    ) -> "Fault":
        real = getattr(owner, method)

        async def faulty(target: object, *args: Any, **kwargs: Any) -> Any:
            if not (self.on and self.matches(*args, **kwargs)):
                return await real(target, *args, **kwargs)
            self.hits += 1
            self.hit.set()
            if self.times is not None and self.hits >= self.times:
                self.on = False
            if self.landed:
                await real(target, *args, **kwargs)
            if error is not None:
                raise error
            return None

        monkeypatch.setattr(owner, method, faulty)
        return self


def drop_answers(monkeypatch: pytest.MonkeyPatch, answer: bytes, *, times: int | None) -> Fault:
    """Drop this process's `answer`s about jobs' work: a plain publish in the old design
    (`Msg.nak`, `Msg.in_progress`), a request in the new (which then times out)."""

    def matches(subject: str, payload: bytes = b"", *_: Any, **__: Any) -> bool:
        return subject.startswith("$JS.ACK.ACKWIRE_JOBS.work-") and payload.startswith(answer)

    fault = Fault(matches, times=times).breaks(monkeypatch, Client, "publish")
    return fault.breaks(monkeypatch, Client, "request", nats.errors.TimeoutError())


def record_writes(
    monkeypatch: pytest.MonkeyPatch, error: Exception, *, by_node: bool = False, **how: Any
) -> Fault:
    """Break writes of jobs' records (`by_node`: only a node's, not the scheduler's of the
    same stack; `how`: `Fault`'s `times` and `landed`)."""

    def matches(subject: str, *_: Any, **__: Any) -> bool:
        # A service's tasks carry the log context it was started in (conftest's stack).
        on_node = "node" in structlog.contextvars.get_contextvars()
        return is_record(subject) and (on_node or not by_node)

    return Fault(matches, **how).breaks(monkeypatch, JetStreamContext, "publish", error)


@pytest.mark.parametrize(
    ("error", "landed"),
    [
        (nats.errors.TimeoutError(), False),
        (nats.errors.TimeoutError(), True),
        (nats.js.errors.NoStreamResponseError(), False),
    ],
    ids=["timed-out", "written-unconfirmed", "no-responders"],
)
async def test_a_start_the_bus_failed_is_tried_again_and_runs_promptly_as_attempt_1(
    error: Exception,
    landed: bool,
    start_stack: StartStack,
    make_token: MakeToken,
    logs: LogWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 18, finding 1: a bus error on a node's start (its record write timing out,
    whether or not it was written, or no responders during an election) dropped the
    attempt untried: the job ran a job timeout late, an attempt spent, or ended
    `no_capacity` first. The start is tried again: the job runs once, as attempt 1."""
    stack = await start_stack()
    fault = record_writes(monkeypatch, error, landed=landed)
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="c-1", kind="echo", payload={"n": 1}))
    assert isinstance(accepted, Accepted)
    began = time.monotonic()
    settings = stack.settings
    within = 2 * settings.job_timeout_s + settings.pending_timeout_s  # the old ways' bound
    seen = await client.until_terminal(accepted.job_id, timeout=within)
    took = time.monotonic() - began
    assert fault.hits == 1
    assert (seen[-1].kind, seen[-1].data) == ("result", {"n": 1})
    starts = logs.named("job.attempt_started", job_id=accepted.job_id)
    assert [s["attempt"] for s in starts] == [1]
    assert took < settings.job_timeout_s / 2, f"the result took {took:.1f} s"
    await client.ws.close()


async def test_a_progress_report_the_bus_failed_never_fails_the_attempt(
    stack: Stack, make_token: MakeToken, logs: LogWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18, finding 3: `JobContext.progress()` raised the bus's errors into the
    handler, and the attempt failed. A progress report the bus did not take is tried
    again in the background: the handler never sees it."""

    def is_progress(delivery: Delivery, *_: Any, **__: Any) -> bool:
        return delivery.kind == "progress"

    failure = BusUnavailableError("storing a progress report: timeout")
    fault = Fault(is_progress).breaks(monkeypatch, SessionQueue, "put", failure)
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="c-1", kind="sleep", payload={"seconds": 2}))
    assert isinstance(accepted, Accepted)
    seen = await client.until_terminal(accepted.job_id)
    assert fault.hits == 1
    assert (seen[-1].kind, seen[-1].data) == ("result", {"slept": 2.0})
    assert not logs.named("job.attempt_failed", job_id=accepted.job_id)
    assert len(logs.named("job.attempt_started", job_id=accepted.job_id)) == 1
    await client.ws.close()


async def _fail_the_first_attempt(payload: AnyObject, job: JobContext) -> AnyObject:
    if job.attempt == 1:
        raise RuntimeError("the first attempt fails on purpose")
    return payload


async def test_a_failed_attempts_lost_nak_and_the_next_attempt_runs_all_the_same(
    start_stack: StartStack, make_token: MakeToken, logs: LogWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18, finding 4: the nak of a failed attempt (attempts left) was lost, so its
    work came back only after the job timeout, and the pending timeout ended the job
    `failed` first ("attempt 1 was lost and no node took the job again"). The job waits:
    JetStream gives the work again after its ack wait, and the next attempt runs."""
    flaky = JobKind("flaky", AnyObject, _fail_the_first_attempt)
    stack = await start_stack(kinds={"flaky": flaky})  # 2 attempts
    fault = drop_answers(monkeypatch, b"-NAK", times=1)
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="c-1", kind="flaky", payload={"n": 1}))
    assert isinstance(accepted, Accepted)
    settings = stack.settings
    within = settings.job_timeout_s + settings.pending_timeout_s + 5
    seen = await client.until_terminal(accepted.job_id, timeout=within)
    assert fault.hits == 1
    assert (seen[-1].kind, seen[-1].data) == ("result", {"n": 1})
    failed = logs.named("job.attempt_failed", job_id=accepted.job_id)
    assert [f["attempt"] for f in failed] == [1]
    await client.ws.close()


async def test_a_failed_attempts_end_written_unconfirmed_hands_the_work_back_at_once(
    start_stack: StartStack, make_token: MakeToken, logs: LogWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug of the redesign, beside finding 4: the write of a failed attempt's end (its
    record, `pending` for the next attempt) lands, but its answer is lost. The node tries
    the end again, meets its own write, and must still hand the work back for the next
    attempt at once; the ledger ignored the repeat ("job already pending"), so the node
    answered nothing, and the next attempt waited a job timeout (300 s by default). The
    old design passes it."""

    def records_the_failure(subject: str, payload: bytes = b"", *_: Any, **__: Any) -> bool:
        return is_record(subject) and b'"state":"pending"' in payload

    fault = Fault(records_the_failure, landed=True)
    fault.breaks(monkeypatch, JetStreamContext, "publish", nats.errors.TimeoutError())
    flaky = JobKind("flaky", AnyObject, _fail_the_first_attempt)
    stack = await start_stack(kinds={"flaky": flaky})  # 2 attempts
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="c-1", kind="flaky", payload={"n": 1}))
    assert isinstance(accepted, Accepted)
    await logs.wait_for("job.attempt_failed", job_id=accepted.job_id)
    failed_at = time.monotonic()
    settings = stack.settings
    within = settings.job_timeout_s + settings.pending_timeout_s + 5
    seen = await client.until_terminal(accepted.job_id, timeout=within)
    took = time.monotonic() - failed_at
    assert fault.hits == 1
    assert (seen[-1].kind, seen[-1].data) == ("result", {"n": 1})
    assert took < settings.job_timeout_s / 2, f"the next attempt came {took:.1f} s later"
    await client.ws.close()


async def test_a_node_killed_while_the_only_other_is_busy_runs_once_a_slot_frees(
    nats_server: EmbeddedNats, start_stack: StartStack, make_token: MakeToken, logs: LogWatch
) -> None:
    """Issue 18, finding 5: a node killed mid-job while the only other node serving the kind
    stays busy for longer than the pending timeout: its work came back, no node had room
    for it, and the job ended `failed` ("attempt 1 was lost and no node took the job
    again"). While a node serves the kind, the job waits for it, and runs when its slot
    frees."""
    stack = await start_stack(kinds={"echo": DEMO_KINDS["echo"]})  # a gateway and a scheduler
    settings = stack.settings
    names = ("node-a", "node-b")
    nodes = [await start_node(name, nats_server, settings, "--capacity", "1") for name in names]
    try:
        for name in names:
            await logs.wait_for("node.joined", gateway="gw-t", node=name, timeout=10)
        client = await connect(stack.gateway.url, make_token())
        # Busy past the victim's job timeout and a pending timeout more, with a margin.
        seconds = settings.job_timeout_s + settings.pending_timeout_s + 3
        busy = await client.submit(Submit(ref="b", kind="sleep", payload={"seconds": seconds}))
        assert isinstance(busy, Accepted)
        busy_node = await first_to_log(nodes, "job.attempt_started", job_id=busy.job_id)
        victim = await client.submit(Submit(ref="v", kind="sleep", payload={"seconds": 2}))
        assert isinstance(victim, Accepted)
        [killed] = [node for node in nodes if node is not busy_node]
        await killed.log_event("job.attempt_started", job_id=victim.job_id)
        await killed.stop(signal.SIGKILL)

        seen = await client.until_terminal(victim.job_id, timeout=seconds + 10)
        assert (seen[-1].kind, seen[-1].data) == ("result", {"slept": 2.0})
        done = await busy_node.log_event("job.state", job_id=victim.job_id, state="done")
        assert done["attempt"] == 2
        assert (await client.until_terminal(busy.job_id))[-1].kind == "result"
        await client.ws.close()
    finally:
        for node in nodes:
            if node.process.returncode is None:
                await node.stop()


async def test_a_quiet_job_lives_while_every_write_of_its_record_fails(
    start_stack: StartStack, make_token: MakeToken, logs: LogWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18, finding 8 (one clock for liveness): JetStream got the node's keep-alive
    (`in_progress`) while the ledger's keep-alive writes of the record failed, so a
    healthy long job with no progress was found silent and ended `failed`. JetStream's
    clock is the only one: every write of the record by the node failing while the
    handler runs (neither its start nor its end) changes nothing."""
    fault = record_writes(monkeypatch, nats.errors.TimeoutError(), by_node=True, times=None)
    fault.on = False

    async def quiet_while_the_bus_fails(payload: SleepPayload, job: JobContext) -> Slept:
        fault.on = True
        try:
            return await _sleep_quietly(payload, job)
        finally:
            fault.on = False

    stack = await start_stack(
        kinds={"quiet": JobKind("quiet", SleepPayload, quiet_while_the_bus_fails)}
    )
    settings = stack.settings
    client = await connect(stack.gateway.url, make_token())
    seconds = settings.job_timeout_s + settings.pending_timeout_s + 1.5
    accepted = await client.submit(Submit(ref="c-1", kind="quiet", payload={"seconds": seconds}))
    assert isinstance(accepted, Accepted)
    seen = await client.until_terminal(accepted.job_id, timeout=seconds + 10)
    assert (seen[-1].kind, seen[-1].data) == ("result", {"slept": seconds})
    assert len(logs.named("job.attempt_started", job_id=accepted.job_id)) == 1
    await client.ws.close()


async def test_a_handler_whose_attempt_was_superseded_is_told_to_stop(
    nats_server: EmbeddedNats,
    start_stack: StartStack,
    make_token: MakeToken,
    logs: LogWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 18, finding 8: a handler whose attempt was superseded is cancelled at its
    node's next keep-alive (`job.attempt_superseded`). This node's keep-alives are lost,
    so JetStream gives the work to a second node after the job timeout; the first node's
    handler is stopped, not run on to an end nobody wants, and the client gets one
    result."""
    stopped, ended = asyncio.Event(), asyncio.Event()

    async def sleep_until_stopped(payload: SleepPayload, job: JobContext) -> Slept:
        try:
            return await _sleep_quietly(payload, job)
        except asyncio.CancelledError:
            stopped.set()
            raise
        finally:
            ended.set()

    stack = await start_stack(
        kinds={"sleep": JobKind("sleep", SleepPayload, sleep_until_stopped)}, capacity=1
    )
    settings = stack.settings
    fault = drop_answers(monkeypatch, b"+WPI", times=None)
    client = await connect(stack.gateway.url, make_token())
    seconds = 3 * settings.job_timeout_s
    accepted = await client.submit(Submit(ref="c-1", kind="sleep", payload={"seconds": seconds}))
    assert isinstance(accepted, Accepted)
    await logs.wait_for("job.attempt_started", job_id=accepted.job_id, node="node-t")
    second = await start_node("node-b", nats_server, settings)
    try:
        started = await second.log_event("job.attempt_started", job_id=accepted.job_id)
        assert started["attempt"] == 2
        async with asyncio.timeout(seconds):
            await ended.wait()
        assert fault.hits
        assert stopped.is_set(), "the superseded handler ran on to its end"
        await logs.wait_for("job.attempt_superseded", job_id=accepted.job_id, node="node-t")

        seen = await client.until_terminal(accepted.job_id, timeout=seconds + 5)
        assert (seen[-1].kind, seen[-1].data) == ("result", {"slept": seconds})
        assert [d.kind for d in seen].count("result") == 1
        await send(client.ws, Ping())
        assert isinstance(await receive(client.ws), Pong)  # no second result came first
        await client.ws.close()
    finally:
        await second.stop()


async def submit_all(client: JobClient, frames: list[Submit]) -> list[str]:
    """Send every submit at once, then read their answers: the job ids, all accepted."""
    for frame in frames:
        await send(client.ws, frame)
    answers = [await client.answer(frame, timeout=10) for frame in frames]
    assert all(isinstance(a, Accepted) for a in answers), answers
    return [a.job_id for a in answers if isinstance(a, Accepted)]


async def test_past_a_thousand_jobs_in_flight_a_job_with_no_room_ends_in_time(
    start_stack: StartStack, make_token: MakeToken, logs: LogWatch
) -> None:
    """Issue 18, finding 7: the scheduler's consumer kept JetStream's default
    `max_ack_pending` of 1,000 (one per job in flight, its timer), so past 1,000 jobs in
    flight other jobs' timers waited. A node runs 1,000 jobs that last, its every slot
    busy; the jobs stored beside them find no room, and each ends `no_capacity` within
    its pending timeout and a few seconds (before: their timers waited for the running
    jobs', and they ran once slots freed).

    (1,100 jobs that find no room at all, behind one busy slot, do not show it: the first
    1,000 timers end at their pending deadlines, each letting in a later job's timer
    before that one is due.)"""
    running, waiting = 1_000, 50
    held = Tally(hold=asyncio.Event())  # runs until the test lets it end
    stack = await start_stack(
        kinds={"tally": held.kind, "echo": DEMO_KINDS["echo"]},
        capacity=running,
        pending_timeout_s=4.0,  # time to start 1,000 jobs
        job_timeout_s=30.0,  # no keep-alive beat within the test
        submit_rate_per_s=1e6,
        submit_burst=10 * (running + waiting),
    )
    settings = stack.settings
    try:
        client = await connect(stack.gateway.url, make_token())
        long = [Submit(ref=f"t-{i}", kind="tally", payload={"i": i}) for i in range(running)]
        for job_id in await submit_all(client, long):
            await logs.wait_for("job.attempt_started", job_id=job_id, timeout=10)
        jobs = await submit_all(
            client, [Submit(ref=f"e-{i}", kind="echo", payload={"i": i}) for i in range(waiting)]
        )
        # Every job was stored by now: each ends by its pending deadline and a few seconds.
        deadline = asyncio.get_running_loop().time() + settings.pending_timeout_s + 3
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                for job_id in jobs:
                    await client.until_terminal(job_id)
        ended = [client.by_job[job_id][-1] for job_id in jobs if client.by_job[job_id]]
        assert len(ended) == waiting, f"{waiting - len(ended)} of {waiting} jobs had no end in time"
        outcomes = Counter(str(d.data.get("code", d.kind)) for d in ended)  # type: ignore[union-attr]
        assert outcomes == {"no_capacity": waiting}
        await client.ws.close()
    finally:
        held.hold.set()  # the node drains at once


async def leader_of(nc: Client, stream: str, cluster: EmbeddedCluster) -> EmbeddedNats:
    """The server leading `stream` now, once it has one (bounded: an election is on)."""
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
                info = await nc.jetstream().stream_info(stream)
                leading = [s for s in cluster.servers if s.pid and s.name == info.cluster.leader]
                if leading:
                    return leading[0]
            await asyncio.sleep(0.1)  # an election has no event to await


async def test_the_sessions_leader_killed_mid_run_fails_no_attempt(
    nats_cluster: EmbeddedCluster, start_stack: StartStack, make_token: MakeToken, logs: LogWatch
) -> None:
    """Issue 18, the 16 spurious failures of the fault run: on a 3-server cluster, the
    server leading the stream that progress is stored in (`ACKWIRE_SESSIONS`) is killed
    while jobs report progress, and restarted. Every job ends with its result, and no
    attempt is counted failed (before: a progress store that met the election failed
    its attempt)."""
    stack = await start_stack(
        capacity=8,
        nats_url=nats_cluster.url,
        replicas=3,
        pending_timeout_s=5.0,
        job_timeout_s=10.0,  # the work's consumer may elect a leader too
        submit_burst=20,
    )
    client = await connect(stack.gateway.url, make_token())
    jobs = []
    for i in range(6):
        accepted = await client.submit(Submit(ref=f"s-{i}", kind="sleep", payload={"seconds": 6}))
        assert isinstance(accepted, Accepted)
        jobs.append(accepted.job_id)
    for job_id in jobs:
        await logs.wait_for("job.attempt_started", job_id=job_id)
    nc = await nats.connect(nats_cluster.url.split(","))
    try:
        leader = await leader_of(nc, subjects.SESSIONS_STREAM, nats_cluster)
        await leader.kill()
        await leader_of(nc, subjects.SESSIONS_STREAM, nats_cluster)  # another one
        await leader.start()
    finally:
        await nc.close()
    for job_id in jobs:
        seen = await client.until_terminal(job_id, timeout=30)
        # A delivery whose ack the election lost comes again (the client dedupes by id).
        ends = {(d.id, d.kind, str(d.data)) for d in seen if d.kind != "progress"}
        assert ends == {(f"{job_id}:result", "result", str({"slept": 6.0}))}
    assert not logs.named("job.attempt_failed")
    assert len(logs.named("job.attempt_started")) == len(jobs)
    await client.ws.close()
