"""The raw peers ackwire's figures stand beside, measured in the same run on the same
machine: NATS JetStream itself, a bare `websockets` server, and python-socketio.

Each is a round trip of the same small payload: published, pulled and its ack confirmed
by the server (JetStream); a frame and its ack frame (`websockets`); an emit and its ack
(python-socketio). Servers and clients are programs in processes of their own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass

import nats
import socketio
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from pydantic import JsonValue
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from ackwire.bench import BenchFailedError
from ackwire.bench.figures import Peer, RoundTrips, closed_loop, now, open_loop
from ackwire.bench.programs import Link, Program, beside, run, started

#: What every message, job and event of the bench carries.
PAYLOAD: dict[str, JsonValue] = {"text": "ackwire bench " * 8}

#: Every answer a baseline waits for is bounded by this,
ANSWER_WITHIN_S = 30.0
#: what a baseline client measures by this,
_MEASURE_WITHIN_S = 4 * ANSWER_WITHIN_S
#: and its whole program, start to end, by this.
_RUN_WITHIN_S = _MEASURE_WITHIN_S + 2 * ANSWER_WITHIN_S

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
        await js.add_consumer(
            stream,
            ConsumerConfig(durable_name="bench", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
        )
        loop = asyncio.get_running_loop()
        began: dict[int, float] = {}
        stored: dict[int, float] = {}
        acked: dict[int, asyncio.Future[float]] = {
            i: loop.create_future() for i in range(params.load.count)
        }

        async def publish(i: int) -> None:
            began[i] = now()
            await js.publish(subject, b"%08d " % i + json.dumps(PAYLOAD).encode())
            stored[i] = now()
            if params.gated:
                await acked[i]

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
                _pull_and_ack(nc, stream, batch, acked),
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


async def _pull_and_ack(
    nc: Client, stream: str, batch: int, acked: dict[int, asyncio.Future[float]]
) -> None:
    """Pull the way a streaming consumer does: `batch` messages asked for at all times
    (topped up each half batch), no timeout on the path. Each ack is confirmed; then the
    future of the message's number gets the time. Runs until cancelled."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    next_message = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.bench"
    top_up = max(1, batch // 2)

    async def ask(how_many: int) -> None:
        # An expiry far beyond any run: no request lapses while the bench waits on it.
        request = {"batch": how_many, "expires": int(ANSWER_WITHIN_S * 10 * 1e9)}
        await nc.publish(next_message, json.dumps(request).encode(), reply=inbox)

    async def ack(msg: Msg) -> None:
        number = int(msg.data[:8])
        try:
            await msg.ack_sync(timeout=ANSWER_WITHIN_S)
        except Exception as exc:  # the waiting publisher fails with it
            acked[number].set_exception(exc)
        else:
            acked[number].set_result(now())

    acking: set[asyncio.Task[None]] = set()
    await ask(batch)
    since_asked = 0
    async for msg in sub.messages:
        status = (msg.headers or {}).get("Status")
        if status is not None:
            raise BenchFailedError(f"JetStream ended a pull request: {status}")
        task = asyncio.create_task(ack(msg))
        acking.add(task)  # referenced until done
        task.add_done_callback(acking.discard)
        since_asked += 1
        if since_asked == top_up:
            since_asked = 0
            await ask(top_up)


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
