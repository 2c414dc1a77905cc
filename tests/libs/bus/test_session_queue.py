import asyncio
from collections.abc import AsyncIterator

import nats
import pytest

from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.models import Delivery
from ackwire.bus.provision import provision
from ackwire.bus.session_queue import SessionQueue, Stored
from ackwire.bus.subjects import new_session_id
from ackwire.settings import Settings


@pytest.fixture
async def queue(nats_server: EmbeddedNats) -> AsyncIterator[SessionQueue]:
    nc = await nats.connect(nats_server.url)
    await provision(nc.jetstream(), Settings(nats_url=nats_server.url))
    yield SessionQueue(nc, nc.jetstream())
    await nc.close()


def delivery(session_id: str, n: int) -> Delivery:
    return Delivery(id=f"m-{n}", kind="message", session_id=session_id, data=n)


async def test_reads_chain_each_message_to_the_one_before(queue: SessionQueue) -> None:
    mine, other = new_session_id(), new_session_id()
    seqs = []
    for n in range(3):
        seqs.append(await queue.put(delivery(mine, n)))
        await queue.put(delivery(other, n))  # interleaved: gaps in my seqs
    read = await queue.read(mine, after=0, limit=10)
    assert read.complete
    assert [(m.seq, m.previous) for m in read.messages] == list(
        zip(seqs, [0, *seqs[:-1]], strict=True)
    )
    partial = await queue.read(mine, after=0, limit=2)
    assert not partial.complete
    assert [m.seq for m in partial.messages] == seqs[:2]


async def test_confirmed_acks_leave_only_what_is_owed_and_twice_is_harmless(
    queue: SessionQueue,
) -> None:
    sid = new_session_id()
    seqs = [await queue.put(delivery(sid, n)) for n in range(4)]
    await queue.confirm(sid, upto=None, singles=(seqs[2],))
    await queue.confirm(sid, upto=None, singles=(seqs[2],))  # acked twice: already gone
    assert [m.seq for m in (await queue.read(sid, 0, 10)).messages] == [seqs[0], seqs[1], seqs[3]]
    await queue.confirm(sid, upto=seqs[1], singles=())
    assert [m.seq for m in (await queue.read(sid, 0, 10)).messages] == [seqs[3]]


async def test_the_live_feed_carries_the_previous_seq_of_the_session(queue: SessionQueue) -> None:
    sid = new_session_id()
    arrived: asyncio.Queue[Stored] = asyncio.Queue()
    sub = await queue.follow(sid, arrived.put, pending_limit=100)
    first = await queue.put(delivery(sid, 1))
    await queue.put(delivery(new_session_id(), 2))
    second = await queue.put(delivery(sid, 3))
    got = [await asyncio.wait_for(arrived.get(), 5) for _ in range(2)]
    assert [(m.seq, m.previous) for m in got] == [(first, 0), (second, first)]
    await sub.unsubscribe()
