"""`ackwire bench jobs`: `echo` jobs through the whole job path, gateway to node and back.

Closed loop: sessions each keep jobs in flight (submit; the terminal `deliver`; ack it;
the next submit): jobs/s, and each job's latency from its submit to its terminal
`deliver`. Open loop: the same sessions submit at a fixed rate between them, whether or
not earlier jobs are done (how a real-time product loads it): each job's latency from
when it was due, and how many took longer than `LATE_S`. One at a time on the idle
stack: the `accepted` latency and the result's.
Beside them, in the same run, with the same payload and as many in flight: raw
JetStream (publish, pull, confirmed ack), raw `websockets` and python-socketio; beside
the open loop, raw JetStream offered the same rate.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from ackwire.bench import BenchFailedError, baselines, programs
from ackwire.bench.baselines import PAYLOAD, RAW_JETSTREAM, RAW_WEBSOCKETS, SOCKETIO, Load
from ackwire.bench.figures import (
    COUNT,
    Measured,
    Report,
    RoundTrips,
    closed_loop,
    now,
    open_loop,
    percentile,
)
from ackwire.bench.programs import Link, beside
from ackwire.bench.sessions import open_session
from ackwire.bench.stack import BenchStack, StackShape
from ackwire.tokens import mint_token
from ackwire.wire import encode, parse_server_frame
from ackwire.wire.frames import Accepted, Ack, Deliver, Error, Hello, Submit

#: One job's whole story, or a run's, is bounded by this.
_RUN_WITHIN_S = 180.0


@dataclass(frozen=True, slots=True)
class Sizes:
    sessions: int
    in_flight: int
    """Jobs each session keeps in flight."""
    jobs_per_session: int
    one_at_a_time: int
    """Jobs run one after the other on the idle stack."""
    baseline_count: int
    """Round trips of each baseline at the closed loop's load."""
    idle_baseline_count: int
    open_rate: float
    """Jobs per second the open loop offers, between all its sessions."""
    open_count: int


FULL = Sizes(20, 32, 100, 200, 20_000, 500, 200.0, 2_000)
QUICK = Sizes(4, 8, 25, 20, 2_000, 50, 50.0, 200)
#: An open-loop job slower than this is late for anything called real time.
LATE_S = 10.0

# The per-session submit limit (20/s by default) is lifted: the closed loop measures the
# job path, not the limiter.
STACK = StackShape(
    gateways=1, scheduler=True, nodes=2, settings={"ACKWIRE_SUBMIT_RATE_PER_S": "100000"}
)


@dataclass(frozen=True, slots=True)
class JobsParams:
    url: str
    tokens: list[str]
    """One session each."""
    in_flight: int
    jobs_per_session: int
    rate_per_session: float | None = None
    """Open loop at this rate; `None`: closed loop, `in_flight` at a time."""


@dataclass(frozen=True, slots=True)
class JobTimes:
    trips: RoundTrips
    """From each submit to its terminal `deliver`."""
    accepted: list[float]
    """From each submit to its `accepted`."""
    failed: int
    """Jobs whose terminal `deliver` was an `error`."""


@dataclass(slots=True)
class _Job:
    submitted: float
    done: asyncio.Future[None]


@dataclass
class _JobSession:
    """One session's socket: submits `echo` jobs, acks every delivery, times each job."""

    ws: ClientConnection
    accepted: list[float] = field(default_factory=list)
    failed: int = 0
    _by_ref: dict[str, _Job] = field(default_factory=dict)
    _by_job_id: dict[str, _Job] = field(default_factory=dict)
    _ended_early: set[str] = field(default_factory=set)

    async def run(self, params: JobsParams) -> RoundTrips:
        count = params.jobs_per_session
        if params.rate_per_session is None:
            jobs = closed_loop(count, params.in_flight, self._job)
        else:
            jobs = open_loop(count, params.rate_per_session, self._job)
        return await beside(jobs, self._read(), helper_name="the gateway's socket")

    async def _job(self, i: int) -> None:
        job = _Job(now(), asyncio.get_running_loop().create_future())
        self._by_ref[f"r-{i}"] = job
        await self.ws.send(encode(Submit(ref=f"r-{i}", kind="echo", payload=PAYLOAD)))
        await job.done

    async def _read(self) -> None:
        async for data in self.ws:
            frame = parse_server_frame(data)
            if isinstance(frame, Accepted):
                job = self._by_ref.pop(frame.ref)
                self.accepted.append(now() - job.submitted)
                self._by_job_id[frame.job_id] = job
                if frame.job_id in self._ended_early:  # its result overtook its `accepted`
                    self._end(frame.job_id)
            elif isinstance(frame, Deliver):
                await self.ws.send(encode(Ack(seq=frame.seq)))
                if frame.kind in ("result", "error") and frame.job_id is not None:
                    self.failed += frame.kind == "error"
                    self._end(frame.job_id)
            elif isinstance(frame, Error):
                raise BenchFailedError(f"a submit was refused: {frame.code}: {frame.message}")

    def _end(self, job_id: str) -> None:
        job = self._by_job_id.pop(job_id, None)
        if job is None:
            self._ended_early.add(job_id)
        elif not job.done.done():
            self._ended_early.discard(job_id)
            job.done.set_result(None)


async def run_jobs(params: JobsParams, _link: Link) -> JobTimes:
    """The client program: every session's jobs, side by side."""
    async with asyncio.timeout(_RUN_WITHIN_S):
        opened = await asyncio.gather(
            *(open_session(params.url, Hello(token=token)) for token in params.tokens)
        )
        sessions = [_JobSession(ws) for ws, _ in opened]
        try:
            parts = await asyncio.gather(*(s.run(params) for s in sessions))
        finally:
            await asyncio.gather(*(s.ws.close() for s in sessions))
    return JobTimes(
        RoundTrips.merged(parts),
        [latency for s in sessions for latency in s.accepted],
        sum(s.failed for s in sessions),
    )


async def measure(sizes: Sizes, workdir: Path, nats_url: str | None) -> Report:
    report = Report(
        "jobs",
        f"closed loop: {sizes.sessions} sessions x {sizes.in_flight} echo jobs in flight,"
        f" {sizes.jobs_per_session} each; open loop: {sizes.open_count} jobs offered at"
        f" {sizes.open_rate:g}/s by {sizes.sessions} sessions; one at a time:"
        f" {sizes.one_at_a_time} jobs; stack: {STACK.describe()}",
    )
    async with BenchStack(STACK, workdir, nats_url) as stack:
        tokens = [mint_token(stack.secret, f"bench-{i}") for i in range(sizes.sessions)]
        url = stack.gateway_urls[0]
        idle = await _jobs(JobsParams(url, tokens[:1], 1, sizes.one_at_a_time))
        loaded = await _jobs(JobsParams(url, tokens, sizes.in_flight, sizes.jobs_per_session))
        per_session = sizes.open_count // sizes.sessions
        offered = await _jobs(
            JobsParams(url, tokens, 0, per_session, sizes.open_rate / sizes.sessions)
        )
        one = Load(sizes.idle_baseline_count)
        many = Load(sizes.baseline_count, sizes.sessions, sizes.in_flight)
        js_idle = await baselines.raw_jetstream(stack.nats_url, one, gated=True)
        js_loaded = await baselines.raw_jetstream(
            stack.nats_url, Load(many.count, 1, many.total_in_flight), gated=True
        )
        js_offered = await baselines.raw_jetstream(
            stack.nats_url, Load(sizes.open_count), gated=True, rate_per_s=sizes.open_rate
        )
    ws_idle, ws_loaded = await baselines.raw_websockets(one, many)
    sio_idle, sio_loaded = await baselines.python_socketio(one, many)

    closed = loaded.trips
    report.add(
        Measured("throughput", "closed loop", closed.rate, "jobs/s"),
        RAW_JETSTREAM.measured("throughput", js_loaded.trips.rate, "msg/s"),
        RAW_WEBSOCKETS.measured("throughput", ws_loaded.rate, "msg/s"),
        SOCKETIO.measured("throughput", sio_loaded.rate, "msg/s"),
    )
    for q in (50, 90, 99):
        key = f"latency_p{q}"
        report.add(
            Measured(key, f"closed loop, submit to result p{q}", closed.ms(q), "ms"),
            RAW_JETSTREAM.measured(key, js_loaded.trips.ms(q), "ms"),
            RAW_WEBSOCKETS.measured(key, ws_loaded.ms(q), "ms"),
            SOCKETIO.measured(key, sio_loaded.ms(q), "ms"),
        )
    rate = f"{sizes.open_rate:g} jobs/s offered"
    for q in (50, 99):
        key = f"open_latency_p{q}"
        report.add(
            Measured(key, f"open loop, {rate}, p{q}", offered.trips.ms(q), "ms"),
            RAW_JETSTREAM.measured(key, js_offered.trips.ms(q), "ms"),
        )
    late = sum(latency > LATE_S for latency in offered.trips.latencies)
    report.add(Measured("open_late", f"open loop, jobs over {LATE_S:g} s", late, COUNT))
    accepted_p50 = percentile(idle.accepted, 50) * 1000
    report.add(
        Measured("idle_accepted_p50", "one at a time, accepted p50", accepted_p50, "ms"),
        RAW_JETSTREAM.measured("idle_accepted_p50", js_idle.stored.ms(50), "ms"),
        RAW_WEBSOCKETS.measured("idle_accepted_p50", ws_idle.ms(50), "ms"),
    )
    for q in (50, 90):
        key = f"idle_result_p{q}"
        report.add(
            Measured(key, f"one at a time, result p{q}", idle.trips.ms(q), "ms"),
            RAW_JETSTREAM.measured(key, js_idle.trips.ms(q), "ms"),
            RAW_WEBSOCKETS.measured(key, ws_idle.ms(q), "ms"),
            SOCKETIO.measured(key, sio_idle.ms(q), "ms"),
        )
    failed = idle.failed + loaded.failed + offered.failed
    report.add(Measured("failed", "jobs that ended in `error`", failed, COUNT))
    return report


async def _jobs(params: JobsParams) -> JobTimes:
    name = f"the jobs client ({len(params.tokens)} x {params.in_flight} in flight)"
    return await programs.run(name, run_jobs, params, _RUN_WITHIN_S + 10)
