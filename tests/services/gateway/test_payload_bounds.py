"""A backend cannot store what no client would accept: a message or event whose frame would
exceed `max_frame_bytes` is refused by the publisher, and nothing reaches the bus. Real NATS,
a real gateway, and a client that accepts frames up to the announced `max_frame_bytes`."""

from collections.abc import Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from ackwire.gateway.server import Gateway
from ackwire.publisher import FrameTooLargeError, Publisher
from ackwire.settings import Settings
from ackwire.wire import encode
from ackwire.wire.bounds import MAX_SEQ
from ackwire.wire.frames import Ack, Deliver, Event, Hello, Subscribe, Subscribed, Welcome
from support.client import WAIT_S, next_deliver, receive, send

MakeToken = Callable[..., str]


async def strict_client(url: str, token: str) -> ClientConnection:
    """A client that, like the SDKs, accepts frames up to the `max_frame_bytes` it was told."""
    ws = await connect(url, subprotocols=[Subprotocol("ackwire.v1")], open_timeout=WAIT_S)
    await send(ws, Hello(token=token))
    welcome = await receive(ws)
    assert isinstance(welcome, Welcome)
    ws.protocol.max_message_size = welcome.max_frame_bytes
    return ws


def room_for_text(frame: Deliver | Event, limit: int) -> int:
    """How many ASCII characters `{"text": …}` may hold in the longest form of `frame`."""
    return limit - len(encode(frame).encode())


async def test_a_message_larger_than_clients_accept_is_refused_and_not_stored(
    gateway: Gateway, publisher: Publisher, settings: Settings, make_token: MakeToken
) -> None:
    limit = settings.max_frame_bytes
    ws = await strict_client(gateway.url, make_token("fay"))
    room = room_for_text(
        Deliver(seq=MAX_SEQ, id="m-fits", kind="message", data={"text": ""}), limit
    )
    with pytest.raises(FrameTooLargeError, match=f"clients accept at most {limit}"):
        await publisher.send({"text": "x" * (room + 1)}, user="fay", message_id="m-too-big")
    sent = await publisher.send({"text": "x" * room}, user="fay", message_id="m-fits")
    deliver = await next_deliver(ws)  # the refused one was never stored: this comes first
    assert (deliver.id, deliver.data) == (sent.id, {"text": "x" * room})
    await send(ws, Ack(seq=deliver.seq))
    assert ws.close_code is None
    await ws.close()


async def test_a_message_is_refused_before_anyone_is_looked_up(publisher: Publisher) -> None:
    with pytest.raises(FrameTooLargeError, match="the message is too large"):
        await publisher.send({"text": "é" * 65536}, user="nobody-at-all")


async def test_an_event_larger_than_clients_accept_is_refused_and_not_stored(
    gateway: Gateway, publisher: Publisher, settings: Settings, make_token: MakeToken
) -> None:
    limit = settings.max_frame_bytes
    ws = await strict_client(gateway.url, make_token("gus", topics=["room.*"]))
    await send(ws, Subscribe(ref="s-1", topic="room.1"))
    assert isinstance(await receive(ws), Subscribed)
    room = room_for_text(Event(topic="room.1", seq=MAX_SEQ, data={"text": ""}), limit)
    for snapshot in (False, True):
        with pytest.raises(FrameTooLargeError, match="the event is too large"):
            await publisher.publish("room.1", {"text": "x" * (room + 1)}, snapshot=snapshot)
    seq = await publisher.publish("room.1", {"text": "x" * room})
    event = await receive(ws)  # neither refused event was stored: this is the first
    assert isinstance(event, Event)
    assert (event.seq, event.data) == (seq, {"text": "x" * room})
    await ws.close()
