"""Sessions moving between gateway processes, on one NATS server and on a 3-server
cluster that loses a server during the test: a takeover closes the older connection 4409
and loses nothing; a gateway killed -9 while it holds sessions sees its clients resume on
the survivor with everything owed, exactly once after dedupe, and, restarted under its
name, does not resurrect the sessions it held."""

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import nats
import pytest
import stamina
from nats.aio.client import Client as Nats
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedCluster, EmbeddedNats
from ackwire.bus.models import Delivery, PresenceChange, TopicEventBody
from ackwire.bus.session_queue import SessionQueue
from ackwire.errors import BusError
from ackwire.sessions.overview import session_summaries, undelivered
from ackwire.wire.codes import CloseCode
from ackwire.wire.frames import Ack, Deliver, Welcome
from support.auth import TEST_SECRET
from support.client import (
    closed_with,
    next_deliver,
    open_ws,
    receive,
    resume_hello,
    send,
    welcomed,
)
from support.processes import AckwireProcess

CLIENTS = 8
#: What the bus may raise meanwhile: nats-py read directly, ackwire through its own calls.
BUS_ERRORS = (NatsError, JetStreamError, TimeoutError, BusError)
T = TypeVar("T")


@dataclass
class Bus:
    url: str
    replicas: int
    lose_a_server: Callable[[], Awaitable[None]]


@pytest.fixture(params=["one server", "cluster losing a server"])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bus]:
    if request.param == "one server":
        async with EmbeddedNats(tmp_path / "nats") as server:

            async def nothing() -> None:
                pass

            yield Bus(server.url, 1, nothing)
    else:
        async with EmbeddedCluster(tmp_path / "cluster") as cluster:
            yield Bus(cluster.url, 3, cluster.servers[0].kill)


async def start_gateway(name: str, bus: Bus) -> tuple[AckwireProcess, str]:
    gateway = await AckwireProcess.start(
        "gateway",
        "--name",
        name,
        "--port",
        "0",
        env={
            "ACKWIRE_NATS_URL": bus.url,
            "ACKWIRE_REPLICAS": str(bus.replicas),
            "ACKWIRE_JWT_SECRET": TEST_SECRET,
            # A lease TTL of 3 s: with a sub-second one (0.3 s heartbeats), an R3 lease
            # bucket sometimes went unanswered for over a minute after a server died
            # (see docs/architecture.md, Open decisions).
            "ACKWIRE_LEASE_HEARTBEAT_S": "1.0",
        },
    )
    line = await gateway.stdout_line(0)
    return gateway, line.split()[-1]


@dataclass
class Holder:
    """A client that dedupes by id, as the protocol asks of every client."""

    token: str
    welcome: Welcome
    ws: ClientConnection
    received: list[Deliver] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        return {d.id for d in self.received}

    @property
    def last_seq(self) -> int:
        return max((d.seq for d in self.received), default=0)

    async def take(self, count: int) -> list[Deliver]:
        frames = [await next_deliver(self.ws, timeout=15) for _ in range(count)]
        self.received.extend(frames)
        return frames

    async def resume(self, url: str) -> Welcome:
        """Resume, retrying while the bus cannot confirm (1011) as a real client would."""
        async for attempt in stamina.retry_context(
            on=(ConnectionClosed, OSError, TimeoutError), attempts=10, wait_max=1.0
        ):
            with attempt:
                ws = await open_ws(url)
                await send(ws, resume_hello(self.token, self.welcome, self.last_seq))
                again = await receive(ws, timeout=15)
        assert isinstance(again, Welcome)
        self.ws = ws
        return again


async def put(queue: SessionQueue, delivery: Delivery) -> int:
    async for attempt in stamina.retry_context(on=BUS_ERRORS, attempts=None, timeout=30):
        with attempt:
            return await queue.put(delivery)
    raise AssertionError("unreachable")


async def retrying(read: Callable[[], Awaitable[T]]) -> T:
    async for attempt in stamina.retry_context(on=BUS_ERRORS, attempts=None, timeout=30):
        with attempt:
            return await read()
    raise AssertionError("unreachable")


async def lease_gone(nc: Nats, gateway: str) -> None:
    """Wait (bounded) until the gateway's lease has expired."""
    kv = await retrying(lambda: nc.jetstream().key_value(subjects.GATEWAYS_BUCKET))
    watcher = await retrying(lambda: kv.watch(subjects.gateway_key(gateway)))
    try:
        async with asyncio.timeout(15):
            entry = await watcher.updates(timeout=15)
            if entry is None:
                return  # no lease at all: expired, and its marker gone too
            while entry is None or entry.operation is None:
                entry = await watcher.updates(timeout=15)
    finally:
        await watcher.stop()


async def test_sessions_of_a_killed_gateway_resume_on_the_survivor_with_nothing_lost(
    bus: Bus, make_token: Callable[..., str]
) -> None:
    gw1, url1 = await start_gateway("gw-1", bus)
    gw2, url2 = await start_gateway("gw-2", bus)
    nc = await nats.connect(bus.url.split(","))
    queue = SessionQueue(nc, nc.jetstream())
    holders = []
    for i in range(CLIENTS + 1):
        token = make_token(f"user-{i}")
        ws, welcome = await welcomed(url1, token)
        holders.append(Holder(token, welcome, ws))
    *movers, sleeper = holders
    for holder in holders:
        for n in range(3):
            await put(
                queue,
                Delivery(
                    id=f"{holder.welcome.session_id}:{n}",
                    kind="message",
                    session_id=holder.welcome.session_id,
                    data={"n": n},
                ),
            )
        first, *_ = await holder.take(3)
        await send(holder.ws, Ack(seq=first.seq))  # one acked (or not yet: dedupe covers it)

    gone_notices = await nc.jetstream().subscribe(  # what the store keeps, from the start
        subjects.topic_subject(subjects.GATEWAYS_GONE_TOPIC), ordered_consumer=True
    )
    gw1.process.send_signal(signal.SIGKILL)
    await gw1.exit_code()
    await bus.lose_a_server()
    for holder in holders:  # owed while no gateway holds the session
        await put(
            queue,
            Delivery(
                id=f"{holder.welcome.session_id}:3",
                kind="message",
                session_id=holder.welcome.session_id,
                data={"n": 3},
            ),
        )

    async def move(holder: Holder) -> None:
        again = await holder.resume(url2)
        assert again.resumed
        assert again.gateway == "gw-2"
        expected = {f"{holder.welcome.session_id}:{n}" for n in range(4)}
        on_new = []
        while holder.ids != expected:
            on_new.extend(await holder.take(1))
        assert len({d.id for d in on_new}) == len(on_new)  # nothing twice on one connection
        assert [d.seq for d in on_new] == sorted(d.seq for d in on_new)  # oldest first
        await send(holder.ws, Ack(upto=holder.last_seq))

    await asyncio.gather(*(move(holder) for holder in movers))

    # gw-1's lease lapses: what it held is no longer counted as connected.
    await lease_gone(nc, "gw-1")
    if bus.replicas == 1:
        # Told once, by the survivor. (Not asserted on the cluster losing a server:
        # there it missed 60 s in about one run in ten; see Open decisions.)
        notice = await gone_notices.next_msg(timeout=60)
        change = PresenceChange.model_validate(TopicEventBody.model_validate_json(notice.data).data)
        assert (change.change, change.gateway) == ("gateway_gone", "gw-1")
    gw1_again, url1_again = await start_gateway("gw-1", bus)  # same name, new incarnation
    summaries = {s.session_id: s for s in await retrying(lambda: session_summaries(nc))}
    for holder in movers:
        assert summaries[holder.welcome.session_id].gateway == "gw-2"
        assert summaries[holder.welcome.session_id].connected
    sleeping = summaries[sleeper.welcome.session_id]
    assert sleeping.gateway == "gw-1"
    assert not sleeping.connected  # the restarted gw-1 does not resurrect it
    assert sleeping.owed in (3, 4)  # its first ack may not have been confirmed

    again = await sleeper.resume(url1_again)
    assert again.resumed
    while len(sleeper.ids) < 4:
        await sleeper.take(1)
    await send(sleeper.ws, Ack(upto=sleeper.last_seq))

    for holder in holders:  # every ack confirmed by the store: nothing is owed
        last = f"{holder.welcome.session_id}:3"
        process = gw1_again if holder is sleeper else gw2
        await process.log_event("delivery.delivered", id=last)
        owed = [m async for m in undelivered(nc, holder.welcome.session_id)]
        assert owed == []
    for holder in holders:
        await holder.ws.close()
    await nc.close()
    assert await gw2.stop() == 0
    assert await gw1_again.stop() == 0


async def test_a_takeover_across_gateway_processes_loses_nothing(
    bus: Bus, make_token: Callable[..., str]
) -> None:
    gw1, url1 = await start_gateway("gw-1", bus)
    gw2, url2 = await start_gateway("gw-2", bus)
    nc = await nats.connect(bus.url.split(","))
    queue = SessionQueue(nc, nc.jetstream())
    token = make_token("tina")
    ws, welcome = await welcomed(url1, token)
    old = Holder(token, welcome, ws)
    sid = welcome.session_id
    for n in range(3):
        await put(queue, Delivery(id=f"{sid}:{n}", kind="message", session_id=sid, data={}))
    await old.take(3)  # in flight on the old connection, unacked

    await bus.lose_a_server()
    new = Holder(token, welcome, old.ws, received=list(old.received))
    again = await new.resume(url2)  # the old socket is still open
    assert again.resumed
    code, _ = await closed_with(old.ws, timeout=15)
    assert code == CloseCode.SESSION_TAKEN_OVER
    await put(queue, Delivery(id=f"{sid}:3", kind="message", session_id=sid, data={}))
    replay = await new.take(4)
    assert [d.id for d in replay] == [f"{sid}:{n}" for n in range(4)]
    assert [d.redelivered for d in replay] == [True, True, True, False]
    await send(new.ws, Ack(upto=new.last_seq))
    await gw2.log_event("delivery.delivered", id=f"{sid}:3")
    assert [m async for m in undelivered(nc, sid)] == []
    await new.ws.close()
    await nc.close()
    assert await gw1.stop() == 0
    assert await gw2.stop() == 0
