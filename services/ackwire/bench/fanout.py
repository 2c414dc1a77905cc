"""`ackwire bench fanout`: one topic, subscribers on two gateways, a burst of events.

A backend publishes events with `Publisher.publish`, some in flight at a time; raw
subscribers (one client process, split over both gateways) count what arrives. Events/s
counts every event delivered to every subscriber, from the first publish to the last
arrival; beside it, how many subscribers were closed 4429 (too slow) and what share of
the events reached them. The baseline, in the same run: python-socketio, a room on each
of two servers, the publisher emitting each event to both (each server broadcasts it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ackwire.bench import programs
from ackwire.bench.baselines import (
    ANSWER_WITHIN_S,
    PAYLOAD,
    SOCKETIO_ROOMS,
    socketio_client,
    socketio_server,
)
from ackwire.bench.figures import COUNT, Measured, Report, RoundTrips, closed_loop, now
from ackwire.bench.programs import Link
from ackwire.bench.sessions import open_session
from ackwire.bench.stack import BenchStack, StackShape
from ackwire.lifecycle import cancel_and_wait
from ackwire.publisher import Publisher
from ackwire.tokens import mint_token
from ackwire.wire import encode, parse_server_frame
from ackwire.wire.codes import CloseCode
from ackwire.wire.frames import Hello, Subscribe, Subscribed

_RUN_WITHIN_S = 180.0

STACK = StackShape(gateways=2)


@dataclass(frozen=True, slots=True)
class Sizes:
    subscribers: tuple[int, ...]
    """One run for each count."""
    events: int
    in_flight: int
    grace_s: float
    """How long after the last publish a subscriber may take to get the rest."""


FULL = Sizes((10, 50, 100), 1000, 64, 5.0)
QUICK = Sizes((10, 50), 300, 64, 3.0)


@dataclass
class _Tally:
    """What one subscriber got."""

    events: int
    """How many it is owed."""
    received: int = 0
    last: float = 0.0
    close_code: int | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once it has every event, or was closed."""

    def arrived(self) -> None:
        self.received += 1
        self.last = now()
        if self.received == self.events:
            self.settled.set()

    def closed(self, code: int | None) -> None:
        self.close_code = code
        self.settled.set()


@dataclass(frozen=True, slots=True)
class Arrivals:
    received: list[int]
    """Events each subscriber got."""
    last: float
    """When the last event arrived, at any subscriber."""
    too_slow: int
    """Subscribers closed 4429."""

    @classmethod
    def of(cls, tallies: Sequence[_Tally]) -> Arrivals:
        return cls(
            [t.received for t in tallies],
            max(t.last for t in tallies),  # 0 when nothing arrived
            sum(t.close_code == CloseCode.TOO_SLOW for t in tallies),
        )


@dataclass(frozen=True, slots=True)
class SubscribersParams:
    urls: list[str]
    """Servers, taken in turn."""
    tokens: list[str]
    """One subscriber each (ackwire); python-socketio's take none, only their number."""
    topic: str
    events: int
    grace_s: float


async def _settle(link: Link, tallies: Sequence[_Tally], grace_s: float) -> None:
    """Until the bench says the publisher is done, then until every subscriber has every
    event or was closed, for `grace_s` at most."""
    await link.told()
    waits = [asyncio.ensure_future(t.settled.wait()) for t in tallies]
    try:
        await asyncio.wait(waits, timeout=grace_s)
    finally:
        for wait in waits:
            wait.cancel()


async def ackwire_subscribers(params: SubscribersParams, link: Link) -> Arrivals:
    """Raw subscribers: hello, subscribe, then count events as fast as they can read."""
    opened = await asyncio.gather(
        *(
            _subscribed(params.urls[i % len(params.urls)], token, params.topic)
            for i, token in enumerate(params.tokens)
        )
    )
    tallies = [_Tally(params.events) for _ in opened]
    readers = [
        asyncio.create_task(_count(ws, tally)) for ws, tally in zip(opened, tallies, strict=True)
    ]
    link.ready()
    try:
        await _settle(link, tallies, params.grace_s)
    finally:
        for reader in readers:
            await cancel_and_wait(reader)
        await asyncio.gather(*(ws.close() for ws in opened))
    return Arrivals.of(tallies)


async def _subscribed(url: str, token: str, topic: str) -> ClientConnection:
    ws, _ = await open_session(url, Hello(token=token))
    await ws.send(encode(Subscribe(ref="s", topic=topic)))
    async with asyncio.timeout(ANSWER_WITHIN_S):
        while not isinstance(parse_server_frame(await ws.recv()), Subscribed):
            pass
    return ws


async def _count(ws: ClientConnection, tally: _Tally) -> None:
    try:
        async for data in ws:
            # Plain JSON, not the frame models: a subscriber here reads as fast as it can.
            if json.loads(data).get("type") == "event":
                tally.arrived()
    except ConnectionClosed:
        pass
    tally.closed(ws.close_code)


@dataclass(frozen=True, slots=True)
class PublishParams:
    urls: list[str]
    """Where to publish: NATS (ackwire), every server (python-socketio)."""
    topic: str
    events: int
    in_flight: int


async def ackwire_publisher(params: PublishParams, _link: Link) -> RoundTrips:
    publisher = await Publisher.connect(params.urls, producer="bench")

    async def publish(i: int) -> None:
        await publisher.publish(params.topic, {"n": i, **PAYLOAD})

    try:
        async with asyncio.timeout(_RUN_WITHIN_S):
            return await closed_loop(params.events, params.in_flight, publish)
    finally:
        await publisher.close()


async def socketio_subscribers(params: SubscribersParams, link: Link) -> Arrivals:
    """python-socketio clients in a room, counting the events the room gets."""
    clients = []
    tallies = [_Tally(params.events) for _ in params.tokens]
    try:
        for i, tally in enumerate(tallies):
            client = await socketio_client(params.urls[i % len(params.urls)])
            clients.append(client)
            client.on("event", _counter(tally))
            await client.call("join", params.topic, timeout=ANSWER_WITHIN_S)
        link.ready()
        await _settle(link, tallies, params.grace_s)
    finally:
        await asyncio.gather(*(client.disconnect() for client in clients))
    return Arrivals.of(tallies)


def _counter(tally: _Tally) -> Callable[[object], Awaitable[None]]:
    async def counted(_data: object) -> None:
        tally.arrived()

    return counted


async def socketio_publisher(params: PublishParams, _link: Link) -> RoundTrips:
    """Each event emitted to every server (each broadcasts it to its room), acked."""
    clients = [await socketio_client(url) for url in params.urls]

    async def publish(i: int) -> None:
        event = {"topic": params.topic, "seq": i, "data": PAYLOAD}
        await asyncio.gather(*(c.call("publish", event, timeout=ANSWER_WITHIN_S) for c in clients))

    try:
        async with asyncio.timeout(_RUN_WITHIN_S):
            return await closed_loop(params.events, params.in_flight, publish)
    finally:
        await asyncio.gather(*(client.disconnect() for client in clients))


@dataclass(frozen=True, slots=True)
class _Burst:
    published: RoundTrips
    arrivals: Arrivals

    @property
    def delivered(self) -> int:
        return sum(self.arrivals.received)

    @property
    def rate(self) -> float:
        if not self.delivered:
            return 0.0
        return self.delivered / (self.arrivals.last - self.published.began)

    def share(self, events: int) -> float:
        return 100 * self.delivered / (events * len(self.arrivals.received))


async def _burst(
    subscribers: programs.Program[SubscribersParams, Arrivals],
    subscribing: SubscribersParams,
    publisher: programs.Program[PublishParams, RoundTrips],
    publishing: PublishParams,
) -> _Burst:
    """Subscribers ready, then the publisher's burst, then what arrived."""
    name = f"{len(subscribing.tokens)} subscribers"
    async with programs.started(name, subscribers, subscribing) as listening:
        await listening.ready(type(None), _RUN_WITHIN_S)
        published = await programs.run("the publisher", publisher, publishing, _RUN_WITHIN_S)
        listening.tell()
        return _Burst(published, await listening.result(_RUN_WITHIN_S))


async def measure(sizes: Sizes, workdir: Path, nats_url: str | None) -> Report:
    report = Report(
        "fanout",
        f"one topic, {', '.join(map(str, sizes.subscribers))} subscribers on two gateways;"
        f" Publisher.publish of {sizes.events} events, {sizes.in_flight} in flight;"
        f" stack: {STACK.describe()}",
    )

    def subscribers(urls: list[str], count: int, tokens: list[str]) -> SubscribersParams:
        return SubscribersParams(urls, tokens, f"bench.fanout-{count}", sizes.events, sizes.grace_s)

    def publishing(urls: list[str], count: int) -> PublishParams:
        return PublishParams(urls, f"bench.fanout-{count}", sizes.events, sizes.in_flight)

    ours: dict[int, _Burst] = {}
    async with BenchStack(STACK, workdir, nats_url) as stack:
        for n in sizes.subscribers:
            tokens = [
                mint_token(stack.secret, f"bench-{n}-{i}", topics=["bench.>"]) for i in range(n)
            ]
            ours[n] = await _burst(
                ackwire_subscribers,
                subscribers(stack.gateway_urls, n, tokens),
                ackwire_publisher,
                publishing([stack.nats_url], n),
            )
    theirs: dict[int, _Burst] = {}
    async with AsyncExitStack() as servers:
        serving = [
            await servers.enter_async_context(
                programs.started(f"python-socketio server {i}", socketio_server, None)
            )
            for i in (1, 2)
        ]
        urls = [await server.ready(str, ANSWER_WITHIN_S) for server in serving]
        for n in sizes.subscribers:
            theirs[n] = await _burst(
                socketio_subscribers,
                subscribers(urls, n, [""] * n),
                socketio_publisher,
                publishing(urls, n),
            )
        for server in serving:
            server.tell()
            await server.result(ANSWER_WITHIN_S)

    for n in sizes.subscribers:
        report.add(
            Measured(
                f"events_per_s_{n}", f"{n} subscribers: events delivered", ours[n].rate, "events/s"
            ),
            SOCKETIO_ROOMS.measured(f"events_per_s_{n}", theirs[n].rate, "events/s"),
        )
        report.add(
            Measured(
                f"delivered_share_{n}",
                f"{n} subscribers: share delivered",
                ours[n].share(sizes.events),
                "%",
            ),
            SOCKETIO_ROOMS.measured(f"delivered_share_{n}", theirs[n].share(sizes.events), "%"),
        )
        report.add(
            Measured(
                f"closed_4429_{n}",
                f"{n} subscribers: closed 4429",
                ours[n].arrivals.too_slow,
                COUNT,
            )
        )
    return report
