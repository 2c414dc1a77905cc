"""A message nobody acks within the retention expires: its producer gets an `expired`
receipt, and it is no longer owed; an ack that comes after that changes nothing."""

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import nats
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.models import Delivery
from ackwire.bus.provision import provision
from ackwire.bus.receipts import Receipts
from ackwire.bus.session_queue import SessionQueue
from ackwire.gateway.server import Gateway
from ackwire.publisher import Publisher
from ackwire.scheduler.expiry import ExpirySweeper
from ackwire.scheduler.service import Scheduler
from ackwire.sessions.overview import undelivered
from ackwire.settings import Settings
from ackwire.wire.frames import Ack
from support.client import next_deliver, send, welcomed
from support.logs import LogWatch


class Brief(NamedTuple):
    gateway: Gateway
    publisher: Publisher
    nc: Client


@pytest.fixture
async def brief(nats_server: EmbeddedNats, settings: Settings) -> AsyncIterator[Brief]:
    """A gateway and a scheduler whose messages are kept one second, and a publisher."""
    brief = settings.model_copy(update={"retention_s": 1.0})
    async with Gateway(brief, name="gw-1", host="127.0.0.1", port=0) as gateway:
        scheduler = Scheduler(brief, name="scheduler-x", host="127.0.0.1")
        await scheduler.start()
        nc = await nats.connect(nats_server.url)
        try:
            yield Brief(gateway, Publisher(nc), nc)
        finally:
            await nc.close()
            await scheduler.drain()


async def test_an_unacked_message_expires_with_a_receipt(
    brief: Brief, make_token: Callable[..., str], logs: LogWatch
) -> None:
    gateway, publisher, _ = brief
    ws, welcome = await welcomed(gateway.url, make_token("hal"))
    sent = await publisher.send({"text": "never acked"}, user="hal")
    await next_deliver(ws)  # received, never acked
    async with asyncio.timeout(10):
        receipt = await publisher.receipt(sent.id)
    assert (receipt.message_id, receipt.outcome) == (sent.id, "expired")
    assert receipt.session_id == welcome.session_id
    await logs.wait_for("delivery.expired_undelivered", id=sent.id)
    assert [m async for m in undelivered(brief.nc, welcome.session_id)] == []
    await ws.close()


async def test_an_ack_after_the_message_expired_is_not_delivered(
    brief: Brief, make_token: Callable[..., str], logs: LogWatch
) -> None:
    """Hole 9: the producer was told `expired`; a late ack must not make it `delivered`."""
    gateway, publisher, _ = brief
    ws, _ = await welcomed(gateway.url, make_token("ida"))
    sent = await publisher.send({"text": "acked too late"}, user="ida")
    deliver = await next_deliver(ws)
    async with asyncio.timeout(10):
        assert (await publisher.receipt(sent.id)).outcome == "expired"
    await send(ws, Ack(seq=deliver.seq))
    await logs.wait_for("delivery.expired_before_ack", id=sent.id)
    assert logs.named("delivery.delivered", id=sent.id) == []
    assert (await publisher.receipt(sent.id)).outcome == "expired"  # and only that
    await ws.close()


async def test_an_ack_removing_a_message_the_sweeper_just_told_expired_is_not_delivered(
    settings: Settings, gateway: Gateway, make_token: Callable[..., str], logs: LogWatch
) -> None:
    """The sweeper tells the producer `expired`, then removes the message; an ack whose
    removal lands in between must not make the message `delivered` too (forced here: the
    sweeper's receipt is issued by hand, and its removal never comes)."""
    nc = await nats.connect(settings.nats_url)
    try:
        publisher = Publisher(nc)
        ws, welcome = await welcomed(gateway.url, make_token("ivy"))
        sent = await publisher.send({"text": "told expired, then acked"}, user="ivy")
        deliver = await next_deliver(ws)
        [stored] = (
            await SessionQueue(nc, nc.jetstream()).read(welcome.session_id, after=0, limit=10)
        ).messages
        await Receipts(nc).issue(stored.delivery, stored.seq, "expired")

        await send(ws, Ack(seq=deliver.seq))
        await logs.wait_for("delivery.expired_before_ack", id=sent.id)
        assert logs.named("delivery.delivered", id=sent.id) == []
        async with asyncio.timeout(5):
            assert (await publisher.receipt(sent.id)).outcome == "expired"
        await ws.close()
    finally:
        await nc.close()


async def test_each_sweep_says_how_much_is_owed_and_how_old_the_oldest_is(
    settings: Settings,
) -> None:
    nc = await nats.connect(settings.nats_url)
    try:
        await provision(nc.jetstream(), settings)
        queue = SessionQueue(nc, nc.jetstream())
        sweeper = ExpirySweeper(queue, Receipts(nc), nc.jetstream(), retention_s=3600, every_s=60)
        session_id = subjects.new_session_id()
        seqs = [
            await queue.put(Delivery(id=f"m-{i}", kind="message", session_id=session_id, data=i))
            for i in range(2)
        ]
        assert await sweeper.sweep() == 0  # nothing is an hour old
        assert REGISTRY.get_sample_value("ackwire_messages_owed") == 2
        oldest = REGISTRY.get_sample_value("ackwire_oldest_owed_seconds")
        assert oldest is not None
        assert 0 <= oldest < 60

        await queue.confirm(session_id, upto=max(seqs), singles=())
        await sweeper.sweep()
        assert REGISTRY.get_sample_value("ackwire_messages_owed") == 0
        assert REGISTRY.get_sample_value("ackwire_oldest_owed_seconds") == 0
    finally:
        await nc.close()


def expired_count(kind: str) -> float:
    return REGISTRY.get_sample_value("ackwire_messages_expired_total", {"kind": kind}) or 0.0


async def test_a_sweep_counts_what_it_expired_and_not_what_was_delivered_meanwhile(
    settings: Settings, logs: LogWatch
) -> None:
    """Every message removed is accounted for once: delivered (the gateway counts it) or
    expired (the sweeper that decided it counts it). A message whose `delivered` receipt
    stood before the sweeper's `expired` one was delivered, not expired."""
    nc = await nats.connect(settings.nats_url)
    try:
        await provision(nc.jetstream(), settings)
        queue = SessionQueue(nc, nc.jetstream())
        receipts = Receipts(nc)
        sweeper = ExpirySweeper(queue, receipts, nc.jetstream(), retention_s=60, every_s=60)
        session_id = subjects.new_session_id()
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        expires_here, acked_meanwhile = (
            Delivery(
                id=message_id,
                kind="message",
                session_id=session_id,
                data=None,
                receipt_to="producer-x",
                created_at=long_ago,
            )
            for message_id in ("m-expired", "m-delivered")
        )
        await queue.put(expires_here)
        await receipts.issue(acked_meanwhile, await queue.put(acked_meanwhile), "delivered")
        before = expired_count("message")

        assert await sweeper.sweep() == 1
        assert expired_count("message") - before == 1
        assert [e["id"] for e in logs.named("delivery.expired_undelivered")] == ["m-expired"]
        assert [m async for m in undelivered(nc, session_id)] == []  # both removed all the same

        await sweeper.sweep()  # nothing left: nothing counted twice
        assert expired_count("message") - before == 1
    finally:
        await nc.close()
