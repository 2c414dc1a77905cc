"""The topic store on a real NATS: where a topic stands, and whether a read can vouch that
nothing was forgotten between its start and its first event (the store keeps a few
events per topic, and events no older than the retention)."""

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.provision import provision
from ackwire.bus.topics import TopicEvent, TopicStore
from ackwire.settings import Settings

KEPT = 3


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


@pytest.fixture
async def store(bus: Client, settings: Settings) -> TopicStore:
    await provision(bus.jetstream(), settings.model_copy(update={"topic_events_kept": KEPT}))
    return await TopicStore.open(bus)


def chain(events: list[TopicEvent]) -> list[tuple[int, int | None]]:
    return [(e.seq, e.previous) for e in events]


async def test_a_read_from_an_event_the_store_holds_follows_it(store: TopicStore) -> None:
    first, second, third = [await store.publish("t", {"n": n}) for n in range(3)]
    events, complete = await store.read("t", after=first, limit=10)
    assert chain(events) == [(second, first), (third, second)]
    assert complete


async def test_a_read_in_batches_says_where_it_stopped(store: TopicStore) -> None:
    first, second, third = [await store.publish("t", {"n": n}) for n in range(3)]
    events, complete = await store.read("t", after=first, limit=1)
    assert (chain(events), complete) == ([(second, first)], False)
    events, complete = await store.read("t", after=second, limit=1)
    assert (chain(events), complete) == ([(third, second)], True)


async def test_a_read_from_an_event_forgotten_past_the_count_can_not_vouch(
    store: TopicStore,
) -> None:
    seqs = [await store.publish("t", {"n": n}) for n in range(KEPT + 2)]
    events, _ = await store.read("t", after=seqs[0], limit=10)
    assert chain(events) == [(seqs[2], None), (seqs[3], seqs[2]), (seqs[4], seqs[3])]


async def test_where_a_topic_stands(store: TopicStore) -> None:
    await store.publish("t", {"n": 0})
    last = await store.publish("t", {"n": 1})
    other = await store.publish("other", {})
    assert await store.latest_seq("t") == last
    assert await store.latest_seq("empty") == other  # none of its own: the stream's last


async def test_a_read_from_where_an_empty_topic_stood_vouches_while_it_is_below_its_count(
    store: TopicStore,
) -> None:
    await store.publish("other", {})
    joined = await store.latest_seq("t")
    seqs = [await store.publish("t", {"n": n}) for n in range(KEPT - 1)]
    events, _ = await store.read("t", after=joined, limit=10)
    assert chain(events)[0] == (seqs[0], joined)  # nothing can have been forgotten yet
    await store.publish("t", {"n": KEPT})  # at its count: it may have forgotten some
    events, _ = await store.read("t", after=joined, limit=10)
    assert chain(events)[0] == (seqs[0], None)


async def test_the_live_feed_says_when_the_store_held_nothing_before(store: TopicStore) -> None:
    live: asyncio.Queue[TopicEvent] = asyncio.Queue()
    await store.follow("t", live.put, pending_limit=16)
    first = await store.publish("t", {"n": 1})
    second = await store.publish("t", {"n": 2})
    async with asyncio.timeout(5):
        got = [await live.get(), await live.get()]
    assert chain(got) == [(first, None), (second, first)]


async def test_a_read_from_an_event_after_which_others_aged_out_can_not_vouch(
    bus: Client, settings: Settings
) -> None:
    await provision(bus.jetstream(), settings.model_copy(update={"retention_s": 1.0}))
    store = await TopicStore.open(bus)
    first = await store.publish("t", {"n": 1})
    aged = await store.publish("t", {"n": 2})
    stream = bus.jetstream()

    async def oldest_held() -> int:
        return (await stream.stream_info(subjects.TOPICS_STREAM)).state.first_seq

    async with asyncio.timeout(10):  # the store forgets them by age, in about a second
        while await oldest_held() <= aged:  # noqa: ASYNC110 - nothing announces an expiry
            await asyncio.sleep(0.1)
    after = await store.publish("t", {"n": 3})
    events, _ = await store.read("t", after=first, limit=10)
    assert chain(events) == [(after, None)]  # `aged` was lost between
    events, _ = await store.read("t", after=aged, limit=10)
    assert chain(events) == [(after, aged)]  # nothing after `aged` was
