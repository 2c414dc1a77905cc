"""Topics at the gateway, one connection's subscriptions at a time, over a real NATS: the
`ConnectionTopics` and `TopicMember` of gateway/topics.py with a stand-in for the
connection's WebSocket that records the frames sent and can hold or break a topic's
sends (what a slow or broken socket does), so the order of events is the test's."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client

from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.provision import provision
from ackwire.bus.topics import TopicEvent, TopicStore
from ackwire.gateway.topics import ConnectionTopics, LiveEvent, TopicHub, TopicMember
from ackwire.settings import Settings
from ackwire.wire import BadFrame, parse_server_frame
from ackwire.wire.codes import ErrorCode
from ackwire.wire.frames import Error, Event, Frame, Subscribe, Subscribed, TopicGap
from ackwire.wire.guard import TopicAdmission
from ackwire.wire.rate import TokenBucket
from support.logs import LogWatch

WAIT_S = 5.0

#: What the socket does with one frame before keeping it (hold it, raise).
Behaviour = Callable[[Frame], Awaitable[None]]


class Socket:
    """Keeps every frame sent; `behaviour[ref]` runs first on the frames answering the
    `subscribe` with that `ref` (the member's first frame carries it)."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.behaviour: dict[str, Behaviour] = {}
        self.arrived = asyncio.Condition()

    async def send(self, sent: Frame | str) -> None:
        frame = parse_server_frame(sent) if isinstance(sent, str) else sent
        assert not isinstance(frame, BadFrame), sent
        ref = getattr(frame, "ref", None)
        if ref in self.behaviour:
            await self.behaviour.pop(ref)(frame)
        async with self.arrived:
            self.frames.append(frame)
            self.arrived.notify_all()

    async def wait_for(self, found: Callable[[Frame], bool]) -> Frame:
        async with asyncio.timeout(WAIT_S), self.arrived:
            await self.arrived.wait_for(lambda: any(found(f) for f in self.frames))
        return next(f for f in self.frames if found(f))


@pytest.fixture
async def bus(nats_server: EmbeddedNats, settings: Settings) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url)
    await provision(nc.jetstream(), settings)
    yield nc
    await nc.close()


async def no_record(_topics: tuple[str, ...]) -> None:
    pass


def connection_topics(store: TopicStore, socket: Socket) -> ConnectionTopics:
    return ConnectionTopics(
        TopicHub(store, pending_limit=64),
        socket.send,
        admission=TopicAdmission((">",), max_topics=10, rate=TokenBucket(rate=100, burst=100)),
        record=no_record,
        buffer=16,
        send_stall_s=5.0,
        on_overflow=lambda: None,
    )


def member_tasks() -> list[asyncio.Task[object]]:
    """The members' tasks still running (each is named `topic <topic>`)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("topic ") and not t.done()]


async def test_leaving_every_topic_while_another_member_fails_ends_every_member(
    nats_server: EmbeddedNats, bus: Client
) -> None:
    """A member that fails (its store went away) while the connection leaves its topics
    drops itself from the connection's subscriptions: leaving goes on, over all of them."""
    store_nc = await nats.connect(nats_server.url)
    store = await TopicStore.open(store_nc)
    await store.publish("b", {"state": 1}, snapshot=True)  # b reads the store after its first send
    socket = Socket()
    b_released = asyncio.Event()

    async def a_held_until_left(_frame: Frame) -> None:
        try:
            await asyncio.Event().wait()  # a slow socket: `a` waits here until it is left
        except asyncio.CancelledError:
            b_released.set()  # while `a` is being left, `b` fails
            await socket.wait_for(lambda f: isinstance(f, Error) and f.ref == "b")
            raise

    async def b_held(_frame: Frame) -> None:
        await b_released.wait()

    socket.behaviour = {"a": a_held_until_left, "b": b_held}
    topics = connection_topics(store, socket)
    await topics.subscribe(Subscribe(ref="a", topic="a"))
    await topics.subscribe(Subscribe(ref="b", topic="b"))
    await store_nc.close()  # the bus is gone: b's next read fails
    async with asyncio.timeout(WAIT_S):
        await topics.leave_all()
    failed = await socket.wait_for(lambda f: isinstance(f, Error) and f.ref == "b")
    assert isinstance(failed, Error)
    assert (failed.code, failed.topic) == (ErrorCode.UNAVAILABLE, "b")
    assert member_tasks() == []


async def test_leaving_every_topic_ends_every_member_even_after_one_crashed(
    bus: Client, logs: LogWatch
) -> None:
    """A member whose task died of an unexpected exception (a bug) is left like the others,
    and its exception is logged, not raised into the connection's clean-up."""
    store = await TopicStore.open(bus)
    socket = Socket()

    async def broken(_frame: Frame) -> None:
        raise RuntimeError("the socket broke")

    socket.behaviour = {"c": broken}
    topics = connection_topics(store, socket)
    await topics.subscribe(Subscribe(ref="c", topic="c"))
    await topics.subscribe(Subscribe(ref="d", topic="d"))
    await socket.wait_for(lambda f: getattr(f, "ref", None) == "d")  # d is live
    async with asyncio.timeout(WAIT_S):
        await topics.leave_all()
    assert member_tasks() == []
    crashed = logs.named("topic.member_crashed", topic="c")
    assert [e["log_level"] for e in crashed] == ["error"]


async def following(store: TopicStore, topic: str) -> asyncio.Queue[TopicEvent]:
    """The topic's live events, as a feed gets them (to hand the member some, not all)."""
    live: asyncio.Queue[TopicEvent] = asyncio.Queue()
    await store.follow(topic, live.put, pending_limit=64)
    return live


async def next_live(live: asyncio.Queue[TopicEvent]) -> TopicEvent:
    async with asyncio.timeout(WAIT_S):
        return await live.get()


async def subscribed_member(
    store: TopicStore, topic: str
) -> tuple[TopicMember, Socket, asyncio.Queue[TopicEvent]]:
    """A member of `topic` that has answered `subscribed`; its socket; the topic's live
    events, for the test to hand it (as its feed would, or would not)."""
    live = await following(store, topic)
    socket = Socket()
    member = TopicMember(
        topic,
        store,
        socket.send,
        buffer=16,
        send_stall_s=5.0,
        on_overflow=lambda: None,
        on_failed=lambda _: None,
    )
    member.start()
    member.release("s")
    await socket.wait_for(lambda f: isinstance(f, Subscribed))
    return member, socket, live


def events_sent(socket: Socket) -> list[tuple[int, bool]]:
    return [(f.seq, f.snapshot) for f in socket.frames if isinstance(f, Event)]


async def test_a_first_live_event_lost_without_a_snapshot_is_read_from_the_store(
    bus: Client,
) -> None:
    store = await TopicStore.open(bus)
    await store.publish("t", {"n": 0})  # before the subscribe: not the client's
    joined, socket, live = await subscribed_member(store, "t")
    first = await store.publish("t", {"n": 1})
    second = await store.publish("t", {"n": 2})
    lost, arrived = await next_live(live), await next_live(live)
    assert (lost.seq, arrived.seq) == (first, second)
    joined.offer(LiveEvent.of(arrived))  # the feed lost the first
    await socket.wait_for(lambda f: isinstance(f, Event) and f.seq == second)
    assert events_sent(socket) == [(first, False), (second, False)]
    await joined.stop()


async def test_a_live_gap_the_store_no_longer_holds_is_told_then_a_newer_snapshot_restores(
    bus: Client, settings: Settings
) -> None:
    await provision(bus.jetstream(), settings.model_copy(update={"topic_events_kept": 3}))
    store = await TopicStore.open(bus)
    joined, socket, live = await subscribed_member(store, "t")
    e1 = await store.publish("t", {"n": 1})
    joined.offer(LiveEvent.of(await next_live(live)))
    await socket.wait_for(lambda f: isinstance(f, Event) and f.seq == e1)
    # Five events the feed loses; the store keeps the last three, the snapshot first.
    missed = [await store.publish("t", {"n": n}, snapshot=n == 4) for n in range(2, 7)]
    arrived = [await next_live(live) for _ in missed]
    joined.offer(LiveEvent.of(arrived[-1]))  # the last one: its previous is missing
    await socket.wait_for(lambda f: isinstance(f, Event) and f.seq == missed[-1])
    told = [(f.code, f.topic, f.gap) for f in socket.frames if isinstance(f, Error)]
    assert told == [(ErrorCode.TOPIC_GAP, "t", TopicGap(after=e1, before=missed[2]))], (
        "the events the store no longer holds were skipped silently"
    )
    # Then the snapshot that covers the hole, again, and the events after it.
    assert events_sent(socket) == [
        (e1, False),
        (missed[2], True),
        (missed[3], False),
        (missed[4], False),
    ]
    await joined.stop()
