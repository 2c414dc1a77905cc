"""protocol.md, Delivery, on a real gateway over a real NATS: sent in order within the
window, acked one by one or up to a seq, sent again after ack_wait, and "delivered" only
once the client's ack has been confirmed by the store."""

from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.aio.client import Client

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.models import Delivery
from ackwire.bus.session_queue import SessionQueue
from ackwire.gateway.server import Gateway
from ackwire.settings import Settings
from ackwire.wire.frames import Ack, Deliver, Ping, Pong
from support.client import receive, send, welcomed
from support.logs import LogWatch

MakeToken = Callable[..., str]


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[tuple[Client, SessionQueue]]:
    nc = await nats.connect(nats_server.url)
    yield nc, SessionQueue(nc, nc.jetstream())
    await nc.close()


@pytest.fixture
async def small_window(settings: Settings) -> AsyncIterator[Gateway]:
    tuned = settings.model_copy(update={"window": 3, "ack_wait_s": 0.5})
    async with Gateway(tuned, name="gw-test", host="127.0.0.1", port=0) as gateway:
        yield gateway


def message(session_id: str, n: int) -> Delivery:
    return Delivery(id=f"m-{n}", kind="message", session_id=session_id, data={"n": n})


async def owed(nc: Client, session_id: str) -> int:
    info = await nc.jetstream().stream_info(
        subjects.SESSIONS_STREAM, subjects_filter=subjects.session_subject(session_id)
    )
    return sum((info.state.subjects or {}).values())


async def next_deliver(ws: object) -> Deliver:
    frame = await receive(ws)  # type: ignore[arg-type]
    assert isinstance(frame, Deliver), frame
    return frame


async def test_deliveries_go_out_in_seq_order_within_the_window(
    small_window: Gateway, bus: tuple[Client, SessionQueue], make_token: MakeToken
) -> None:
    _, queue = bus
    ws, welcome = await welcomed(small_window.url, make_token())
    seqs = [await queue.put(message(welcome.session_id, n)) for n in range(5)]
    first = [await next_deliver(ws) for _ in range(3)]
    assert [d.seq for d in first] == seqs[:3]
    assert [d.id for d in first] == ["m-0", "m-1", "m-2"]
    assert all(d.kind == "message" and not d.redelivered for d in first)
    await send(ws, Ack(seq=seqs[1]))  # one ack: room for exactly one more
    fourth = await next_deliver(ws)
    assert fourth.seq == seqs[3]
    await send(ws, Ping())
    assert isinstance(await receive(ws), Pong)  # and not the fifth: the window is full
    await ws.close()


async def test_ack_upto_releases_everything_up_to_it_and_the_store_forgets_them(
    small_window: Gateway,
    bus: tuple[Client, SessionQueue],
    make_token: MakeToken,
    logs: LogWatch,
) -> None:
    nc, queue = bus
    ws, welcome = await welcomed(small_window.url, make_token())
    seqs = [await queue.put(message(welcome.session_id, n)) for n in range(5)]
    delivered = [await next_deliver(ws) for _ in range(3)]
    await send(ws, Ack(upto=delivered[-1].seq))
    rest = [await next_deliver(ws) for _ in range(2)]
    assert [d.seq for d in rest] == seqs[3:]
    await logs.wait_for("delivery.delivered", id="m-2")
    assert await owed(nc, welcome.session_id) == 2
    await send(ws, Ack(upto=seqs[-1]))
    for n in range(5):  # an ack's receipts go out together; their lines in any order
        await logs.wait_for("delivery.delivered", id=f"m-{n}")
    assert await owed(nc, welcome.session_id) == 0
    assert len(logs.named("delivery.delivered")) == 5
    await ws.close()


async def test_an_unacked_message_comes_again_after_ack_wait_with_its_seq_and_id(
    small_window: Gateway, bus: tuple[Client, SessionQueue], make_token: MakeToken
) -> None:
    _, queue = bus
    ws, welcome = await welcomed(small_window.url, make_token())
    seq = await queue.put(message(welcome.session_id, 1))
    first = await next_deliver(ws)
    again = await next_deliver(ws)  # ack_wait is 0.5 s here
    assert (first.seq, first.id, first.redelivered) == (seq, "m-1", False)
    assert (again.seq, again.id, again.redelivered) == (seq, "m-1", True)
    await send(ws, Ack(seq=seq))
    await ws.close()


async def test_a_put_retried_under_the_same_id_is_delivered_once(
    small_window: Gateway, bus: tuple[Client, SessionQueue], make_token: MakeToken
) -> None:
    _, queue = bus
    ws, welcome = await welcomed(small_window.url, make_token())
    first = await queue.put(message(welcome.session_id, 7))
    assert await queue.put(message(welcome.session_id, 7)) == first
    await queue.put(message(welcome.session_id, 8))
    assert [(await next_deliver(ws)).id for _ in range(2)] == ["m-7", "m-8"]
    await ws.close()


async def test_the_seed_bug_a_dead_socket_is_never_reported_delivered(
    small_window: Gateway,
    bus: tuple[Client, SessionQueue],
    make_token: MakeToken,
    logs: LogWatch,
) -> None:
    """The seeds' "Successfully sent result to session" for a socket that had died."""
    nc, queue = bus
    ws, welcome = await welcomed(small_window.url, make_token())
    await queue.put(message(welcome.session_id, 1))
    await next_deliver(ws)  # it reached the client's socket...
    ws.transport.abort()  # ...which dies before the client could ack
    await logs.wait_for("session.connection_ended", session_id=welcome.session_id)
    await queue.put(message(welcome.session_id, 2))  # and more arrives for the dead session
    assert logs.named("delivery.delivered") == []
    assert await owed(nc, welcome.session_id) == 2  # both still owed, durably


async def test_more_than_the_gateway_buffers_arrives_in_order_exactly_once(
    gateway: Gateway, bus: tuple[Client, SessionQueue], make_token: MakeToken
) -> None:
    """Past its bound the gateway drops live messages and reads them from the store later."""
    _, queue = bus
    ws, welcome = await welcomed(gateway.url, make_token())
    total = 2500  # the window buffers 1024 unsent messages at most
    seqs = [await queue.put(message(welcome.session_id, n)) for n in range(total)]
    received: list[Deliver] = []
    while len(received) < total:
        received.append(await next_deliver(ws))
        if len(received) % 32 == 0 or len(received) == total:
            await send(ws, Ack(upto=received[-1].seq))
    assert [d.seq for d in received] == seqs
    assert [d.id for d in received] == [f"m-{n}" for n in range(total)]
    assert not any(d.redelivered for d in received)
    await ws.close()
