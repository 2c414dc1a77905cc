"""protocol.md, Topics, on real gateways over a real NATS: who may subscribe to what, the
snapshot then live events with no gap and no overlap, restore on resume, fan-out, and a
slow or dead subscriber that never holds up the others."""

import asyncio
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from websockets.asyncio.client import ClientConnection

from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.provision import provision
from ackwire.bus.topics import TopicStore
from ackwire.gateway.server import Gateway
from ackwire.sessions.record import Found
from ackwire.sessions.table import SessionTable
from ackwire.settings import Settings
from ackwire.wire.codes import CloseCode, ErrorCode
from ackwire.wire.frames import (
    Bye,
    Error,
    Event,
    Hello,
    Subscribe,
    Subscribed,
    TopicGap,
    Unsubscribe,
    Unsubscribed,
)
from support.client import SilentClient, closed_with, receive, resumed, send, welcomed
from support.logs import LogWatch

MakeToken = Callable[..., str]


@pytest.fixture
async def store(nats_server: EmbeddedNats, settings: Settings) -> AsyncIterator[TopicStore]:
    nc = await nats.connect(nats_server.url)
    await provision(nc.jetstream(), settings)
    yield await TopicStore.open(nc)
    await nc.close()


async def subscribe(ws: ClientConnection, topic: str, ref: str = "s-1") -> None:
    await send(ws, Subscribe(ref=ref, topic=topic))
    answer = await receive(ws)
    assert answer == Subscribed(ref=ref, topic=topic), answer


async def next_event(ws: ClientConnection, timeout: float = 5.0) -> Event:
    frame = await receive(ws, timeout)
    assert isinstance(frame, Event), frame
    return frame


@pytest.mark.parametrize(
    ("claims", "topic", "answer"),
    [
        (["pipeline.42"], "pipeline.42", "subscribed"),
        (["pipeline.>"], "pipeline.42", "subscribed"),
        (["pipeline.>"], "pipeline.42.step-3", "subscribed"),
        (["pipeline.>"], "pipeline", ErrorCode.FORBIDDEN_TOPIC),
        (["chat.*"], "chat.lobby", "subscribed"),
        (["chat.*"], "chat.lobby.x", ErrorCode.FORBIDDEN_TOPIC),
        (["pipeline.42"], "pipeline.43", ErrorCode.FORBIDDEN_TOPIC),
        ([], "pipeline.42", ErrorCode.FORBIDDEN_TOPIC),
        (["pipeline.42"], "pipeline.>", ErrorCode.BAD_FRAME),
        (["pipeline.>"], "pipeline.*", ErrorCode.BAD_FRAME),
        (["pipeline.>"], "pipeline..42", ErrorCode.BAD_FRAME),
        (["pipeline.>"], "pipeline.4 2", ErrorCode.BAD_FRAME),
    ],
)
async def test_who_may_subscribe_to_what(
    gateway: Gateway, make_token: MakeToken, claims: list[str], topic: str, answer: str
) -> None:
    ws, _ = await welcomed(gateway.url, make_token(topics=claims))
    await send(ws, Subscribe(ref="r-1", topic=topic))
    frame = await receive(ws)
    if answer == "subscribed":
        assert frame == Subscribed(ref="r-1", topic=topic)
    else:
        assert isinstance(frame, Error), frame
        assert (frame.ref, frame.code, frame.topic) == ("r-1", answer, topic)
    await ws.close()


async def test_subscription_changes_are_throttled(
    settings: Settings, make_token: MakeToken
) -> None:
    """Hole 10: each subscribe and unsubscribe writes the session's record; past the
    budget a client is told `rate_limited`, and what it holds is unchanged."""
    tight = settings.model_copy(update={"subscribe_rate_per_s": 0.01, "subscribe_burst": 2})
    async with Gateway(tight, name="gw-tight", host="127.0.0.1", port=0) as gateway:
        ws, _ = await welcomed(gateway.url, make_token(topics=["t.*"]))
        for n in (1, 2):
            await send(ws, Subscribe(ref=f"r-{n}", topic=f"t.{n}"))
            assert await receive(ws) == Subscribed(ref=f"r-{n}", topic=f"t.{n}")
        await send(ws, Subscribe(ref="r-3", topic="t.3"))
        refused = await receive(ws)
        assert isinstance(refused, Error)
        assert (refused.ref, refused.code, refused.topic) == ("r-3", ErrorCode.RATE_LIMITED, "t.3")
        await send(ws, Unsubscribe(ref="r-4", topic="t.1"))
        refused = await receive(ws)
        assert isinstance(refused, Error)
        assert (refused.ref, refused.code) == ("r-4", ErrorCode.RATE_LIMITED)
        await ws.close()


async def test_subscribed_then_the_snapshot_then_live_events_in_order(
    gateway: Gateway, store: TopicStore, make_token: MakeToken
) -> None:
    await store.publish("pipeline.7", {"percent": 10})  # before the snapshot: covered by it
    snap = await store.publish("pipeline.7", {"percent": 20}, snapshot=True)
    after = await store.publish("pipeline.7", {"percent": 30})  # stored before the subscribe
    ws, _ = await welcomed(gateway.url, make_token(topics=["pipeline.>"]))
    await subscribe(ws, "pipeline.7")
    first = await next_event(ws)
    assert (first.seq, first.data, first.snapshot) == (snap, {"percent": 20}, True)
    second = await next_event(ws)
    assert (second.seq, second.data, second.snapshot) == (after, {"percent": 30}, False)
    live = [await store.publish("pipeline.7", {"percent": p}, snapshot=p == 50) for p in (40, 50)]
    got = [await next_event(ws) for _ in live]
    assert [(e.seq, e.snapshot) for e in got] == [(live[0], False), (live[1], False)]
    await ws.close()


async def test_without_a_snapshot_only_events_after_the_subscribe_come(
    gateway: Gateway, store: TopicStore, make_token: MakeToken
) -> None:
    await store.publish("board", {"old": True})
    ws, _ = await welcomed(gateway.url, make_token(topics=["board"]))
    await subscribe(ws, "board")
    seq = await store.publish("board", {"new": True})
    event = await next_event(ws)
    assert (event.seq, event.data, event.snapshot) == (seq, {"new": True}, False)
    await ws.close()


async def test_a_subscriber_joining_during_a_burst_sees_no_gap_and_no_overlap(
    gateway: Gateway, store: TopicStore, make_token: MakeToken
) -> None:
    published: list[int] = []
    halfway = asyncio.Event()
    joined = asyncio.Event()

    async def publish_burst() -> None:
        for n in range(300):
            published.append(await store.publish("race", {"n": n}, snapshot=n % 25 == 0))
            if n == 100:
                halfway.set()
                await joined.wait()  # the subscriber joins while events keep coming

    burst = asyncio.create_task(publish_burst())
    await asyncio.wait_for(halfway.wait(), 10)
    ws, _ = await welcomed(gateway.url, make_token(topics=["race"]))
    await send(ws, Subscribe(ref="r", topic="race"))
    joined.set()
    assert await receive(ws) == Subscribed(ref="r", topic="race")
    snapshot = await next_event(ws)
    assert snapshot.snapshot
    async with asyncio.timeout(15):
        await burst
    expected = [seq for seq in published if seq > snapshot.seq]
    got = [await next_event(ws) for _ in expected]
    assert [e.seq for e in got] == expected  # every event after the snapshot, once, in order
    assert not any(e.snapshot for e in got)
    await ws.close()


async def test_a_snapshot_older_than_the_store_keeps_is_followed_by_a_gap_not_silence(
    nats_server: EmbeddedNats, settings: Settings, make_token: MakeToken
) -> None:
    """The store keeps the last few events of a topic; what followed an older snapshot is
    gone. The client is told which events it lost, then gets the ones still stored."""
    tuned = settings.model_copy(update={"topic_events_kept": 5})
    nc = await nats.connect(nats_server.url)
    await provision(nc.jetstream(), tuned)
    store = await TopicStore.open(nc)
    snap = await store.publish("board", {"v": 0}, snapshot=True)
    seqs = []
    for v in range(1, 11):
        seqs.append(await store.publish("board", {"v": v}))
        await store.publish("other", {"v": v})  # seqs are the stream's: shared by topics
    kept = seqs[5:]  # the 5 the store keeps; the 5 right after the snapshot are gone
    async with Gateway(tuned, name="gw-1", host="127.0.0.1", port=0) as gateway:
        ws, _ = await welcomed(gateway.url, make_token(topics=["board"]))
        await subscribe(ws, "board")
        snapshot = await next_event(ws)
        assert (snapshot.seq, snapshot.snapshot) == (snap, True)
        told = await receive(ws)
        assert isinstance(told, Error), f"the events after the snapshot were skipped: {told}"
        assert (told.code, told.topic) == (ErrorCode.TOPIC_GAP, "board")
        assert told.gap == TopicGap(after=snap, before=kept[0])
        assert [(await next_event(ws)).seq for _ in kept] == kept
        live = await store.publish("board", {"v": 11})
        assert (await next_event(ws)).seq == live
        await ws.close()
    await nc.close()


async def test_unsubscribe_stops_the_events(
    gateway: Gateway, store: TopicStore, make_token: MakeToken
) -> None:
    ws, _ = await welcomed(gateway.url, make_token(topics=["a", "b"]))
    await subscribe(ws, "a", ref="1")
    await subscribe(ws, "b", ref="2")
    await send(ws, Unsubscribe(ref="3", topic="a"))
    assert await receive(ws) == Unsubscribed(ref="3", topic="a")
    await store.publish("a", {"x": 1})
    seq_b = await store.publish("b", {"x": 2})
    event = await next_event(ws)
    assert (event.topic, event.seq) == ("b", seq_b)  # and nothing of `a`
    await ws.close()


async def test_subscriptions_are_restored_on_a_resume_on_another_gateway(
    two_gateways: tuple[Gateway, Gateway], store: TopicStore, make_token: MakeToken
) -> None:
    gw1, gw2 = two_gateways
    token = make_token("rita", topics=["pipeline.>"])
    ws, welcome = await welcomed(gw1.url, token)
    await subscribe(ws, "pipeline.9")
    await ws.close()
    snap = await store.publish("pipeline.9", {"percent": 90}, snapshot=True)
    ws2, again = await resumed(gw2.url, token, welcome)
    assert again.resumed
    event = await next_event(ws2)  # no new subscribe
    assert (event.topic, event.seq, event.snapshot) == ("pipeline.9", snap, True)
    live = await store.publish("pipeline.9", {"percent": 100})
    assert (await next_event(ws2)).seq == live
    await ws2.close()


async def test_a_restored_topic_the_new_token_does_not_allow_is_dropped(
    two_gateways: tuple[Gateway, Gateway], store: TopicStore, make_token: MakeToken
) -> None:
    gw1, gw2 = two_gateways
    ws, welcome = await welcomed(gw1.url, make_token("sam", topics=["x", "y"]))
    await subscribe(ws, "x", ref="1")
    await subscribe(ws, "y", ref="2")
    await ws.close()
    ws2, _ = await resumed(gw2.url, make_token("sam", topics=["y"]), welcome)
    dropped = await receive(ws2)
    assert isinstance(dropped, Error)
    assert (dropped.code, dropped.topic) == (ErrorCode.FORBIDDEN_TOPIC, "x")
    assert "x" in dropped.message
    seq = await store.publish("y", {})
    await store.publish("x", {})
    assert (await next_event(ws2)).seq == seq
    await ws2.close()


async def test_fan_out_to_many_subscribers_on_two_gateways(
    two_gateways: tuple[Gateway, Gateway], store: TopicStore, make_token: MakeToken
) -> None:
    gateways = list(two_gateways)
    clients = []
    for i in range(20):
        ws, _ = await welcomed(gateways[i % 2].url, make_token(f"fan-{i}", topics=["room.1"]))
        await subscribe(ws, "room.1")
        clients.append(ws)
    seqs = [await store.publish("room.1", {"n": n}) for n in range(50)]

    async def all_events(ws: ClientConnection) -> list[int]:
        return [(await next_event(ws)).seq for _ in seqs]

    received = await asyncio.gather(*(all_events(ws) for ws in clients))
    assert all(got == seqs for got in received)
    for ws in clients:
        await ws.close()


async def test_a_burst_is_not_a_slow_client(
    settings: Settings, store: TopicStore, make_token: MakeToken
) -> None:
    """A burst fills a member's inbox faster than the gateway writes: the member catches
    up from the store, in order, with no gap, and nobody is closed 4429."""
    tuned = settings.model_copy(update={"topic_buffer": 8})
    async with (
        Gateway(tuned, name="gw-1", host="127.0.0.1", port=0) as gw1,
        Gateway(tuned, name="gw-2", host="127.0.0.1", port=0) as gw2,
    ):
        subscribers = []
        for n in range(30):
            url = (gw1, gw2)[n % 2].url
            ws, _ = await welcomed(url, make_token(f"board-{n}", topics=["burst"]))
            await subscribe(ws, "burst")
            subscribers.append(ws)
        count, in_flight = 400, 64

        async def everything(ws: ClientConnection) -> list[int]:
            return [(await next_event(ws, timeout=30)).seq for _ in range(count)]

        readers = [asyncio.create_task(everything(ws)) for ws in subscribers]
        published: list[int] = []
        for start in range(0, count, in_flight):
            batch = range(start, min(count, start + in_flight))
            published += await asyncio.gather(*(store.publish("burst", {"n": n}) for n in batch))
        received = await asyncio.gather(*readers)
        assert all(seqs == sorted(published) for seqs in received)
        assert all(ws.close_code is None for ws in subscribers)
        for ws in subscribers:
            await ws.close()


async def test_a_slow_subscriber_is_closed_4429_while_the_others_keep_pace(
    settings: Settings, store: TopicStore, make_token: MakeToken, logs: LogWatch
) -> None:
    """A subscriber whose socket accepts nothing for `send_stall_s` is too slow."""
    tuned = settings.model_copy(update={"topic_buffer": 8, "send_stall_s": 1.0})
    async with Gateway(tuned, name="gw-1", host="127.0.0.1", port=0) as gateway:
        hello = Hello(token=make_token("slow", topics=["feed"]))
        slow = await SilentClient.connect(gateway.url, hello, rcvbuf=4096)
        slow.send(Subscribe(ref="s", topic="feed"))  # and never reads again
        fast, _ = await welcomed(gateway.url, make_token("fast", topics=["feed"]))
        await subscribe(fast, "feed")
        payload = {"blob": "x" * 4000}
        count = 1500
        seqs = []

        async def keep_reading() -> list[int]:
            return [(await next_event(fast, timeout=20)).seq for _ in range(count)]

        reader = asyncio.create_task(keep_reading())
        for _ in range(count):
            seqs.append(await store.publish("feed", payload))
        assert await reader == seqs  # the fast one got every event, in order
        await logs.wait_for("connection.closing", close_code=CloseCode.TOO_SLOW, timeout=20)
        slow.close()
        await fast.close()


async def test_a_member_that_dies_during_a_fan_out_is_gone_and_the_others_get_everything(
    two_gateways: tuple[Gateway, Gateway],
    store: TopicStore,
    make_token: MakeToken,
    logs: LogWatch,
) -> None:
    gw1, _ = two_gateways
    members = []
    for i in range(5):
        ws, welcome = await welcomed(gw1.url, make_token(f"room-{i}", topics=["room.2"]))
        await subscribe(ws, "room.2")
        members.append((ws, welcome))
    doomed, doomed_welcome = members.pop(2)
    seqs = []
    for n in range(60):
        seqs.append(await store.publish("room.2", {"n": n}))
        if n == 20:
            doomed.transport.abort()  # dies mid fan-out, without a close frame
    # Gone at once: its connection ended and left the topic while events still flowed.
    await logs.wait_for("session.let_go", session_id=doomed_welcome.session_id)
    for ws, _ in members:
        assert [(await next_event(ws)).seq for _ in seqs] == seqs
        await ws.close()
    assert not [e for e in logs.events if e["log_level"] in ("error", "exception")]


async def test_a_session_that_did_not_resume_has_no_subscriptions(
    nats_server: EmbeddedNats, gateway: Gateway, store: TopicStore, make_token: MakeToken
) -> None:
    token = make_token("tom", topics=["a"])
    ws, welcome = await welcomed(gateway.url, token)
    await subscribe(ws, "a")
    await send(ws, Bye())
    await closed_with(ws)
    snapshot = await store.publish("a", {"x": 1}, snapshot=True)
    fresh, again = await resumed(gateway.url, token, welcome)
    assert (again.resumed, again.reason) == (False, "expired")
    nc = await nats.connect(nats_server.url)
    found = await (await SessionTable.open(nc.jetstream())).lookup(again.session_id)
    await nc.close()
    assert isinstance(found, Found)
    assert found.record.topics == ()  # nothing to restore: the client subscribes again
    await subscribe(fresh, "a")
    assert (await next_event(fresh)).seq == snapshot  # and gets the snapshot then
    await fresh.close()
