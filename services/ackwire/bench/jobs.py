"""`ackwire bench jobs`: `echo` jobs through the whole job path, gateway to node and back.

Closed loop: sessions each keep jobs in flight (submit; the terminal `deliver`; ack it;
the next submit): jobs/s, and each job's latency from its submit to its terminal
`deliver`. Open loop, at each of a few rates: the same sessions submit at that rate
between them, whether or not earlier jobs are done (how a real-time product loads it):
each job's latency from when it was due, and how many took longer than `LATE_S`. One at
a time on the idle stack: the `accepted` latency and the result's.
Beside them, in the same run, with the same payload and as many in flight: the raw
durable job loop (the baseline of the targets), raw JetStream (publish, pull, confirmed
ack), raw `websockets` and python-socketio; beside each open loop, the raw job loop and
raw JetStream offered the same rate.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from ackwire.bench import BenchFailedError, baselines, programs
from ackwire.bench.baselines import (
    PAYLOAD,
    RAW_JETSTREAM,
    RAW_JOB_LOOP,
    RAW_WEBSOCKETS,
    SOCKETIO,
    Load,
    RawJobLoop,
)
from ackwire.bench.figures import (
    COUNT,
    Measured,
    Report,
    RoundTrips,
    Target,
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
    open_rates: tuple[float, ...]
    """Jobs per second the open loop offers, between all its sessions: a run at each."""
    open_s: float
    """How long each rate is offered."""

    def open_jobs_per_session(self, rate: float) -> int:
        return max(1, round(rate * self.open_s / self.sessions))

    def open_count(self, rate: float) -> int:
        """Jobs offered at `rate`, by ackwire's sessions and by each baseline."""
        return self.open_jobs_per_session(rate) * self.sessions


FULL = Sizes(20, 32, 100, 200, 20_000, 500, (20.0, 200.0, 500.0), 10.0)
QUICK = Sizes(4, 8, 25, 20, 2_000, 50, (20.0, 50.0), 1.0)
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

    async def run(self, params: JobsParams, phase: float) -> RoundTrips:
        """The session's jobs; in an open loop, due `phase` of an interval after the
        first session's (the sessions' jobs come evenly spread, not in bursts)."""
        count = params.jobs_per_session
        if params.rate_per_session is None:
            jobs = closed_loop(count, params.in_flight, self._job)
        else:
            jobs = open_loop(count, params.rate_per_session, self._job, phase=phase)
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
            parts = await asyncio.gather(
                *(s.run(params, i / len(sessions)) for i, s in enumerate(sessions))
            )
        finally:
            await asyncio.gather(*(s.ws.close() for s in sessions))
    return JobTimes(
        RoundTrips.merged(parts),
        [latency for s in sessions for latency in s.accepted],
        sum(s.failed for s in sessions),
    )


async def measure(sizes: Sizes, workdir: Path, nats_url: str | None) -> Report:
    rates = ", ".join(f"{rate:g}" for rate in sizes.open_rates)
    report = Report(
        "jobs",
        f"closed loop: {sizes.sessions} sessions x {sizes.in_flight} echo jobs in flight,"
        f" {sizes.jobs_per_session} each; open loop: {sizes.open_s:g} s at each of {rates}"
        f" jobs/s offered by {sizes.sessions} sessions; one at a time:"
        f" {sizes.one_at_a_time} jobs; stack: {STACK.describe()}",
        targets=_targets(sizes.open_rates),
    )
    async with BenchStack(STACK, workdir, nats_url) as stack:
        tokens = [mint_token(stack.secret, f"bench-{i}") for i in range(sizes.sessions)]
        url = stack.gateway_urls[0]
        idle = await _jobs(JobsParams(url, tokens[:1], 1, sizes.one_at_a_time))
        loaded = await _jobs(JobsParams(url, tokens, sizes.in_flight, sizes.jobs_per_session))
        offered = {
            rate: await _jobs(
                JobsParams(url, tokens, 0, sizes.open_jobs_per_session(rate), rate / sizes.sessions)
            )
            for rate in sizes.open_rates
        }
        # The baselines run on the stack's nats-server while the stack is idle.
        one = Load(sizes.idle_baseline_count)
        many = Load(sizes.baseline_count, sizes.sessions, sizes.in_flight)
        loop_loaded = await baselines.raw_job_loop(
            stack.nats_url, many.count, in_flight=many.total_in_flight, nats_pid=stack.nats_pid
        )
        loop_offered = {
            rate: await baselines.raw_job_loop(
                stack.nats_url, sizes.open_count(rate), rate_per_s=rate, nats_pid=stack.nats_pid
            )
            for rate in sizes.open_rates
        }
        js_idle = await baselines.raw_jetstream(stack.nats_url, one, gated=True)
        js_loaded = await baselines.raw_jetstream(
            stack.nats_url, Load(many.count, 1, many.total_in_flight), gated=True
        )
        js_offered = {
            rate: await baselines.raw_jetstream(
                stack.nats_url, Load(sizes.open_count(rate)), gated=True, rate_per_s=rate
            )
            for rate in sizes.open_rates
        }
    ws_idle, ws_loaded = await baselines.raw_websockets(one, many)
    sio_idle, sio_loaded = await baselines.python_socketio(one, many)

    closed = loaded.trips
    report.add(
        Measured("throughput", "closed loop", closed.rate, "jobs/s"),
        RAW_JOB_LOOP.measured("throughput", loop_loaded.trips.rate, "jobs/s"),
        RAW_JETSTREAM.measured("throughput", js_loaded.trips.rate, "msg/s"),
        RAW_WEBSOCKETS.measured("throughput", ws_loaded.rate, "msg/s"),
        SOCKETIO.measured("throughput", sio_loaded.rate, "msg/s"),
    )
    for q in (50, 90, 99):
        key = f"latency_p{q}"
        report.add(
            Measured(key, f"closed loop, submit to result p{q}", closed.ms(q), "ms"),
            RAW_JOB_LOOP.measured(key, loop_loaded.trips.ms(q), "ms"),
            RAW_JETSTREAM.measured(key, js_loaded.trips.ms(q), "ms"),
            RAW_WEBSOCKETS.measured(key, ws_loaded.ms(q), "ms"),
            SOCKETIO.measured(key, sio_loaded.ms(q), "ms"),
        )
    for rate in sizes.open_rates:
        for q in (50, 99):
            key = f"open_latency_p{q}_{rate:g}"
            report.add(
                Measured(
                    key,
                    f"open loop, {rate:g} jobs/s offered, p{q}",
                    offered[rate].trips.ms(q),
                    "ms",
                ),
                RAW_JOB_LOOP.measured(key, loop_offered[rate].trips.ms(q), "ms"),
                RAW_JETSTREAM.measured(key, js_offered[rate].trips.ms(q), "ms"),
            )
        late = sum(latency > LATE_S for latency in offered[rate].trips.latencies)
        report.add(
            Measured(
                f"open_late_{rate:g}", f"open loop, {rate:g}/s, jobs over {LATE_S:g} s", late, COUNT
            )
        )
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
    failed = idle.failed + loaded.failed + sum(run.failed for run in offered.values())
    report.add(Measured("failed", "jobs that ended in `error`", failed, COUNT))
    _add_cpu_per_job(report, loop_loaded)
    return report


def _targets(open_rates: tuple[float, ...]) -> list[Target]:
    """Issue 18's: ackwire's job path against the raw durable job loop."""
    return [
        Target.rate("jobs closed loop", "throughput", RAW_JOB_LOOP, at_least=0.3),
        *(
            Target.latency(
                f"job round trip p99 at {rate:g} jobs/s offered",
                f"open_latency_p99_{rate:g}",
                RAW_JOB_LOOP,
                at_most=2.0,
            )
            for rate in open_rates
        ),
    ]


def _add_cpu_per_job(report: Report, loop: RawJobLoop) -> None:
    """The raw job loop's CPU per job in its closed loop: in all, then each process's."""
    used = {"requester": loop.requester_cpu_s, "worker": loop.worker_cpu_s}
    if loop.nats_cpu_s is not None:
        used["nats-server"] = loop.nats_cpu_s
    jobs = len(loop.trips.latencies)
    report.add(
        Measured(
            RAW_JOB_LOOP.key_of("cpu_per_job"),
            f"raw loop CPU per job ({', '.join(used)})",
            sum(used.values()) / jobs * 1000,
            "ms",
        )
    )
    for process, cpu_s in used.items():
        report.add(
            Measured(
                RAW_JOB_LOOP.key_of(f"cpu_per_job_{process.replace('-', '_')}"),
                f"raw loop CPU per job, {process}",
                cpu_s / jobs * 1000,
                "ms",
            )
        )


async def _jobs(params: JobsParams) -> JobTimes:
    name = f"the jobs client ({len(params.tokens)} x {params.in_flight} in flight)"
    return await programs.run(name, run_jobs, params, _RUN_WITHIN_S + 10)
