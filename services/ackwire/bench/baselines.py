"""The raw peers ackwire's figures stand beside, measured in the same run on the same
machine: a durable job loop on raw NATS JetStream, JetStream itself, a bare `websockets`
server, and python-socketio.

Each is a round trip of the same small payload: a job stored, pulled by a worker, its
result stored and pulled back, both acked (the raw job loop); published, pulled and its
ack confirmed by the server (JetStream); a frame and its ack frame (`websockets`); an
emit and its ack (python-socketio). Servers and clients are programs in processes of
their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import socketio
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from pydantic import JsonValue
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from ackwire.bench import BenchFailedError
from ackwire.bench.figures import Peer, RoundTrips, closed_loop, now, open_loop
from ackwire.bench.programs import ClientProcess, Link, Program, beside, run, started

#: What every message, job and event of the bench carries.
PAYLOAD: dict[str, JsonValue] = {"text": "ackwire bench " * 8}

#: Every answer a baseline waits for is bounded by this,
ANSWER_WITHIN_S = 30.0
#: what a baseline client measures by this,
_MEASURE_WITHIN_S = 4 * ANSWER_WITHIN_S
#: and its whole program, start to end, by this.
_RUN_WITHIN_S = _MEASURE_WITHIN_S + 2 * ANSWER_WITHIN_S

RAW_JOB_LOOP = Peer(
    "raw_job_loop",
    "raw durable job loop",
    "job stored, worker pulls, result stored, both acked",
)
RAW_JETSTREAM = Peer("raw_jetstream", "raw JetStream", "publish, pull, confirmed ack")
RAW_WEBSOCKETS = Peer("raw_websockets", "raw websockets", "frame, ack frame")
SOCKETIO = Peer("socketio", "python-socketio", "emit with ack")
SOCKETIO_ROOMS = Peer("socketio", "python-socketio", "a room on each of two servers")


@dataclass(frozen=True, slots=True)
class Load:
    """`count` round trips over `connections`, each keeping `in_flight` of them going."""

    count: int
    connections: int = 1
    in_flight: int = 1

    @property
    def total_in_flight(self) -> int:
        return self.connections * self.in_flight

    def shares(self) -> list[int]:
        """How many round trips each connection makes."""
        each, extra = divmod(self.count, self.connections)
        return [each + (1 if i < extra else 0) for i in range(self.connections)]


# -- raw NATS JetStream ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JetStreamParams:
    nats_url: str
    load: Load
    """JetStream multiplexes one connection: `total_in_flight` on it."""
    gated: bool
    """True: a publish waits until an earlier message's ack is confirmed (a closed loop, as
    jobs run); False: publishes run `total_in_flight` ahead and consumption follows (as
    `Publisher.send` does)."""
    rate_per_s: float | None = None
    """Publishes started this many a second whether or not earlier ones are done (an open
    loop, each timed from when it was due), instead of `total_in_flight` at a time."""


@dataclass(frozen=True, slots=True)
class JetStreamTrips:
    trips: RoundTrips
    """From each publish to its ack, confirmed by the server."""
    stored: RoundTrips
    """From each publish to its PubAck."""


async def jetstream_round_trips(params: JetStreamParams, _link: Link) -> JetStreamTrips:
    """Publish (PubAck awaited), pull, ack (confirmed) on a stream of the bench's own."""
    nc = await nats.connect(params.nats_url.split(","), name="ackwire-bench-raw")
    js = nc.jetstream()
    stream = f"BENCH_RAW_{secrets.token_hex(4).upper()}"
    subject = f"bench.raw.{stream}"
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    try:
        await _add_pull_consumer(js, stream)
        loop = asyncio.get_running_loop()
        began: dict[int, float] = {}
        stored: dict[int, float] = {}
        acked: dict[int, asyncio.Future[float]] = {
            i: loop.create_future() for i in range(params.load.count)
        }

        async def publish(i: int) -> None:
            began[i] = now()
            await js.publish(subject, _numbered(i))
            stored[i] = now()
            if params.gated:
                await acked[i]

        async def ack(msg: Msg) -> None:
            number = _number_of(msg)
            try:
                await msg.ack_sync(timeout=ANSWER_WITHIN_S)
            except Exception as exc:  # the waiting publisher fails with it
                acked[number].set_exception(exc)
            else:
                acked[number].set_result(now())

        offered: RoundTrips | None = None

        async def publish_all_then_await_acks() -> None:
            nonlocal offered
            if params.rate_per_s is None:
                await closed_loop(params.load.count, params.load.total_in_flight, publish)
            else:
                offered = await open_loop(params.load.count, params.rate_per_s, publish)
            await asyncio.gather(*acked.values())

        batch = min(params.load.total_in_flight, 256)
        async with asyncio.timeout(_MEASURE_WITHIN_S):
            await beside(
                publish_all_then_await_acks(),
                _pull(nc, stream, batch, ack),
                helper_name="the pull",
            )
        ended = {i: future.result() for i, future in acked.items()}
        trips = _spans(began, ended) if offered is None or not params.gated else offered
        return JetStreamTrips(trips, _spans(began, stored))
    finally:
        await js.delete_stream(stream)
        await nc.close()


def _spans(began: dict[int, float], ended: dict[int, float]) -> RoundTrips:
    return RoundTrips(
        [ended[i] - began[i] for i in began], min(began.values()), max(ended.values())
    )


def _numbered(i: int) -> bytes:
    """The payload, led by its number: what a message or job of the raw baselines carries."""
    return b"%08d " % i + json.dumps(PAYLOAD).encode()


def _number_of(msg: Msg) -> int:
    return int(msg.data[:8])


#: The consumer on each stream of the raw baselines, durable, that they pull from.
_CONSUMER = "bench"


async def _add_pull_consumer(js: JetStreamContext, stream: str) -> None:
    config = ConsumerConfig(
        durable_name=_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        max_ack_pending=-1,  # as many unacked as the loop keeps in flight
    )
    await js.add_consumer(stream, config)


async def _pull(
    nc: Client, stream: str, batch: int, handle: Callable[[Msg], Coroutine[Any, Any, None]]
) -> None:
    """Pull from `stream`'s consumer the way a streaming consumer does: `batch` messages
    asked for at all times (topped up each half batch), no timeout on the path; each
    message handled in a task of its own, so that handlings run side by side. Runs until
    cancelled, or until a handling fails, with its error."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    next_message = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{_CONSUMER}"
    top_up = max(1, batch // 2)

    async def ask(how_many: int) -> None:
        # An expiry far beyond any run: no request lapses while the bench waits on it.
        request = {"batch": how_many, "expires": int(ANSWER_WITHIN_S * 10 * 1e9)}
        await nc.publish(next_message, json.dumps(request).encode(), reply=inbox)

    await ask(batch)
    since_asked = 0
    try:
        async with asyncio.TaskGroup() as handling:
            async for msg in sub.messages:
                status = (msg.headers or {}).get("Status")
                if status is not None:
                    raise BenchFailedError(f"JetStream ended a pull request: {status}")
                handling.create_task(handle(msg))
                since_asked += 1
                if since_asked == top_up:
                    since_asked = 0
                    await ask(top_up)
    except ExceptionGroup as failed:  # the program's one line names the first error
        raise failed.exceptions[0] from None


# -- the raw durable job loop ------------------------------------------------------

#: Messages each pull of the raw job loop asks for at all times (as in the raw JetStream
#: loop at 640 in flight).
_JOB_LOOP_BATCH = 256


@dataclass(frozen=True, slots=True)
class JobStreams:
    """The raw job loop's two streams, of its own for one run."""

    jobs: str
    jobs_subject: str
    results: str
    results_subject: str

    @classmethod
    def named_anew(cls) -> JobStreams:
        suffix = secrets.token_hex(4).upper()
        return cls(
            f"BENCH_JOBS_{suffix}",
            f"bench.jobs.{suffix}",
            f"BENCH_RESULTS_{suffix}",
            f"bench.results.{suffix}",
        )


async def job_worker(nats_url: str, link: Link) -> float:
    """The raw job loop's worker, which also owns its streams: makes JOBS and RESULTS (file
    storage) with a pull consumer on each and says ready with their names; then pulls jobs
    in batches and handles them side by side, each by publishing its result (the job's
    payload) to RESULTS, PubAck awaited, then acking the job with `ack_sync`. Once told,
    deletes both streams and returns the CPU seconds it used from ready to told."""
    nc = await nats.connect(nats_url.split(","), name="ackwire-bench-raw-worker")
    js = nc.jetstream()
    streams = JobStreams.named_anew()
    made: list[str] = []
    try:
        for stream, subject in (
            (streams.jobs, streams.jobs_subject),
            (streams.results, streams.results_subject),
        ):
            config = StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE)
            await js.add_stream(config)
            made.append(stream)
            await _add_pull_consumer(js, stream)

        async def work(job: Msg) -> None:
            await js.publish(streams.results_subject, job.data, timeout=ANSWER_WITHIN_S)
            await job.ack_sync(timeout=ANSWER_WITHIN_S)

        began = time.process_time()
        link.ready(streams)
        async with asyncio.timeout(_RUN_WITHIN_S):
            pulling = _pull(nc, streams.jobs, _JOB_LOOP_BATCH, work)
            await beside(link.told(), pulling, helper_name="the pull of jobs")
        return time.process_time() - began
    finally:
        for stream in made:
            await js.delete_stream(stream)
        await nc.close()


@dataclass(frozen=True, slots=True)
class RequesterParams:
    nats_url: str
    streams: JobStreams
    count: int
    in_flight: int
    """Closed loop: jobs in flight at all times."""
    rate_per_s: float | None = None
    """Open loop at this rate instead, each job timed from when it was due."""


@dataclass(frozen=True, slots=True)
class RequesterRun:
    trips: RoundTrips
    """From each job's publish (or, in the open loop, when it was due) to its result's
    arrival."""
    cpu_s: float
    """What the requester used of the CPU while it ran them."""


async def job_requester(params: RequesterParams, _link: Link) -> RequesterRun:
    """The raw job loop's requester: publishes each job to JOBS with its PubAck awaited,
    pulls the results from RESULTS in batches and acks each one with a plain ack (not
    confirmed: a job is done once its result is here, and nothing waits on the ack)."""
    nc = await nats.connect(params.nats_url.split(","), name="ackwire-bench-raw-requester")
    js = nc.jetstream()
    try:
        loop = asyncio.get_running_loop()
        arrived: dict[int, asyncio.Future[None]] = {
            i: loop.create_future() for i in range(params.count)
        }

        async def job(i: int) -> None:
            await js.publish(params.streams.jobs_subject, _numbered(i), timeout=ANSWER_WITHIN_S)
            await arrived[i]

        async def result(msg: Msg) -> None:
            waiting = arrived[_number_of(msg)]
            if not waiting.done():  # a result stored twice (a job redelivered) counts once
                waiting.set_result(None)
            await msg.ack()

        if params.rate_per_s is None:
            jobs = closed_loop(params.count, params.in_flight, job)
        else:
            jobs = open_loop(params.count, params.rate_per_s, job)
        began = time.process_time()
        async with asyncio.timeout(_MEASURE_WITHIN_S):
            pulling = _pull(nc, params.streams.results, _JOB_LOOP_BATCH, result)
            trips = await beside(jobs, pulling, helper_name="the pull of results")
        return RequesterRun(trips, time.process_time() - began)
    finally:
        await nc.close()


# -- raw websockets ------------------------------------------------------------


async def websockets_server(_params: None, link: Link) -> None:
    """Answers each frame with an ack frame naming its `seq`, until told to stop."""

    async def answer(ws: ServerConnection) -> None:
        async for frame in ws:
            await ws.send(json.dumps({"type": "ack", "seq": json.loads(frame)["seq"]}))

    async with serve(answer, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        link.ready(f"ws://{host}:{port}")
        await link.told()


@dataclass(frozen=True, slots=True)
class PeerParams:
    url: str
    load: Load


async def websockets_round_trips(params: PeerParams, _link: Link) -> RoundTrips:
    """A frame and its ack frame, `in_flight` at a time on each connection."""

    async def on_one_connection(count: int) -> RoundTrips:
        async with connect(params.url, compression=None, ping_interval=None) as ws:
            waiting: dict[int, asyncio.Future[None]] = {}

            async def read() -> None:
                async for frame in ws:
                    waiting.pop(json.loads(frame)["seq"]).set_result(None)

            async def one(i: int) -> None:
                waiting[i] = asyncio.get_running_loop().create_future()
                await ws.send(json.dumps({"type": "msg", "seq": i, "data": PAYLOAD}))
                await waiting[i]

            trips = closed_loop(count, params.load.in_flight, one)
            return await beside(trips, read(), helper_name="the server's socket")

    async with asyncio.timeout(_MEASURE_WITHIN_S):
        parts = await asyncio.gather(*(on_one_connection(n) for n in params.load.shares()))
    return RoundTrips.merged(parts)


# -- python-socketio -------------------------------------------------------------


async def socketio_server(_params: None, link: Link) -> None:
    """python-socketio on aiohttp: acks `msg` with its `seq`; `join` enters a room;
    `publish` emits its data to a room as `event`, then acks. Until told to stop."""
    sio = socketio.AsyncServer(async_mode="aiohttp")

    async def answer(_sid: str, data: dict[str, object]) -> object:
        return data["seq"]

    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    async def publish(_sid: str, data: dict[str, object]) -> object:
        await sio.emit("event", data, room=data["topic"])
        return data["seq"]

    sio.on("msg", answer)
    sio.on("join", join)
    sio.on("publish", publish)
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        link.ready(f"http://{host}:{port}")
        await link.told()
    finally:
        await runner.cleanup()


async def socketio_client(url: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient()
    await client.connect(url, transports=["websocket"], wait_timeout=ANSWER_WITHIN_S)
    return client


async def socketio_round_trips(params: PeerParams, _link: Link) -> RoundTrips:
    """An emit and its ack, `in_flight` at a time on each connection."""

    async def on_one_connection(count: int) -> RoundTrips:
        client = await socketio_client(params.url)

        async def one(i: int) -> None:
            await client.call("msg", {"seq": i, "data": PAYLOAD}, timeout=ANSWER_WITHIN_S)

        try:
            return await closed_loop(count, params.load.in_flight, one)
        finally:
            await client.disconnect()

    async with asyncio.timeout(_MEASURE_WITHIN_S):
        parts = await asyncio.gather(*(on_one_connection(n) for n in params.load.shares()))
    return RoundTrips.merged(parts)


# -- running them ------------------------------------------------------------------


async def raw_jetstream(
    nats_url: str, load: Load, *, gated: bool, rate_per_s: float | None = None
) -> JetStreamTrips:
    params = JetStreamParams(nats_url, load, gated, rate_per_s)
    return await run("the raw JetStream client", jetstream_round_trips, params, _RUN_WITHIN_S)


@dataclass(frozen=True, slots=True)
class RawJobLoop:
    trips: RoundTrips
    requester_cpu_s: float
    worker_cpu_s: float
    nats_cpu_s: float | None
    """`None`: the nats-server is not the bench's own (`--nats-url`), so not measured."""


async def raw_job_loop(
    nats_url: str,
    count: int,
    *,
    in_flight: int = 1,
    rate_per_s: float | None = None,
    nats_pid: int | None,
) -> RawJobLoop:
    """One run of the raw job loop, a worker and a requester each in its own process, on
    streams of its own: a closed loop of `in_flight`, or an open loop at `rate_per_s`.
    The nats-server's CPU (when `nats_pid` is the bench's own) counts from the worker's
    ready to the requester's end, so it includes what an idle stack asks of it."""
    async with started("the raw job loop's worker", job_worker, nats_url) as worker:
        streams = await worker.ready(JobStreams, ANSWER_WITHIN_S)
        params = RequesterParams(nats_url, streams, count, in_flight, rate_per_s)
        nats_began = 0.0 if nats_pid is None else _cpu_s_of(nats_pid)
        requested = await beside(
            run("the raw job loop's requester", job_requester, params, _RUN_WITHIN_S),
            _failure_of(worker),
            helper_name="the raw job loop's worker",
        )
        nats_cpu_s = None if nats_pid is None else _cpu_s_of(nats_pid) - nats_began
        worker.tell()
        worker_cpu_s = await worker.result(ANSWER_WITHIN_S)
    return RawJobLoop(requested.trips, requested.cpu_s, worker_cpu_s, nats_cpu_s)


async def _failure_of(process: ClientProcess[Any]) -> None:
    """Waits for `process`'s answer, which a server gives before it is told only if it
    fails: then this raises its error."""
    await process.result(_RUN_WITHIN_S)


def _cpu_s_of(pid: int) -> float:
    """The CPU seconds, user and system, that process `pid` has used (Linux's /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat[stat.rindex(")") + 2 :].split()  # its name may hold spaces
    user_ticks, system_ticks = int(after_name[11]), int(after_name[12])  # proc(5): 14, 15
    return (user_ticks + system_ticks) / os.sysconf("SC_CLK_TCK")


async def raw_websockets(*loads: Load) -> list[RoundTrips]:
    """One run at each load, against one server."""
    return await _against_one_server(
        "raw websockets", websockets_server, websockets_round_trips, loads
    )


async def python_socketio(*loads: Load) -> list[RoundTrips]:
    """One run at each load, against one server."""
    return await _against_one_server(
        "python-socketio", socketio_server, socketio_round_trips, loads
    )


async def _against_one_server(
    name: str,
    server: Program[None, None],
    client: Program[PeerParams, RoundTrips],
    loads: tuple[Load, ...],
) -> list[RoundTrips]:
    async with started(f"the {name} server", server, None) as serving:
        url = await serving.ready(str, ANSWER_WITHIN_S)
        trips = [
            await run(f"the {name} client", client, PeerParams(url, load), _RUN_WITHIN_S)
            for load in loads
        ]
        serving.tell()
        await serving.result(ANSWER_WITHIN_S)
    return trips
