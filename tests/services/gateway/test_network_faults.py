"""A gateway cut off from NATS and back, through a real TCP path a test cuts (support.proxy):
what was stored meanwhile arrives, and a session taken over meanwhile is never delivered
to twice."""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ackwire.bus.embedded import EmbeddedNats
from ackwire.gateway.server import Gateway
from ackwire.publisher import Publisher
from ackwire.sessions.table import SessionTable
from ackwire.settings import Settings
from ackwire.wire import parse_server_frame
from ackwire.wire.codes import CloseCode
from ackwire.wire.frames import Deliver, Event, Subscribe, Subscribed
from support.client import next_deliver, receive, resumed, send, welcomed
from support.logs import LogWatch
from support.proxy import TcpProxy

MakeToken = Callable[..., str]


@pytest.fixture
async def proxy(nats_server: EmbeddedNats) -> AsyncIterator[TcpProxy]:
    path = TcpProxy("127.0.0.1", int(nats_server.url.rsplit(":", 1)[1]))
    await path.start()
    yield path
    await path.stop()


@pytest.fixture
async def cut_off(settings: Settings, proxy: TcpProxy) -> AsyncIterator[Gateway]:
    """A gateway whose only way to NATS is the proxy."""
    through_proxy = settings.model_copy(update={"nats_url": proxy.url})
    async with Gateway(through_proxy, name="gw-cut", host="127.0.0.1", port=0) as gateway:
        yield gateway


async def frames_until_closed(ws: ClientConnection, timeout: float) -> tuple[list[Any], int]:
    frames = []
    try:
        async with asyncio.timeout(timeout):
            async for data in ws:
                frames.append(parse_server_frame(data))
    except ConnectionClosed:
        pass
    assert ws.close_code is not None, "still open"
    return frames, ws.close_code


async def test_a_message_stored_while_the_gateway_was_cut_off_arrives_when_it_is_back(
    cut_off: Gateway,
    proxy: TcpProxy,
    publisher: Publisher,
    make_token: MakeToken,
    logs: LogWatch,
) -> None:
    """Hole 2: nobody waits for a next message to find the one the live feed missed."""
    ws, welcome = await welcomed(cut_off.url, make_token("lee"))
    await proxy.cut()
    await logs.wait_for("nats.disconnected")
    sent = await publisher.send({"n": 1}, session=welcome.session_id)  # live copy: lost
    await proxy.restore()
    deliver = await next_deliver(ws, timeout=15)
    assert (deliver.id, deliver.redelivered) == (sent.id, False)
    await ws.close()


async def test_a_topic_event_published_while_the_gateway_was_cut_off_arrives_when_it_is_back(
    cut_off: Gateway,
    proxy: TcpProxy,
    publisher: Publisher,
    make_token: MakeToken,
    logs: LogWatch,
) -> None:
    """Hole 2, for topics: a member reads what it missed once NATS is back."""
    ws, _ = await welcomed(cut_off.url, make_token("ned", topics=["board.*"]))
    await send(ws, Subscribe(ref="c-1", topic="board.1"))
    assert isinstance(await receive(ws), Subscribed)
    first = await publisher.publish("board.1", {"n": 1})
    assert (await receive(ws)).seq == first  # type: ignore[union-attr]
    await proxy.cut()
    await logs.wait_for("nats.disconnected")
    missed = await publisher.publish("board.1", {"n": 2})  # live copy: lost
    await proxy.restore()
    event = await receive(ws, timeout=15)
    assert isinstance(event, Event)
    assert (event.seq, event.data) == (missed, {"n": 2})
    await ws.close()


async def test_a_gateway_back_on_nats_delivers_nothing_for_a_session_taken_over_meanwhile(
    settings: Settings,
    proxy: TcpProxy,
    publisher: Publisher,
    make_token: MakeToken,
    logs: LogWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hole 5: until its refresh finds the session gone, a gateway back on NATS must not
    deliver what the new holder delivers."""
    async with (
        Gateway(
            settings.model_copy(update={"nats_url": proxy.url}),
            name="gw-1",
            host="127.0.0.1",
            port=0,
        ) as gw1,
        Gateway(settings, name="gw-2", host="127.0.0.1", port=0) as gw2,
    ):
        token = make_token("max")
        ws1, welcome = await welcomed(gw1.url, token)
        await proxy.cut()
        await logs.wait_for("nats.disconnected")
        ws2, again = await resumed(gw2.url, token, welcome)  # nobody answers for gw-1
        assert again.resumed

        write = SessionTable.replace

        async def slow_write(self: SessionTable, *args: Any, **kwargs: Any) -> int:
            await asyncio.sleep(1)  # gw-1's refresh takes a while to find the session gone
            return await write(self, *args, **kwargs)

        monkeypatch.setattr(SessionTable, "replace", slow_write)
        await proxy.restore()
        await logs.wait_for("nats.reconnected", timeout=15)
        sent = await publisher.send({"n": 2}, session=welcome.session_id)
        assert (await next_deliver(ws2)).id == sent.id
        frames, code = await frames_until_closed(ws1, timeout=15)
        assert code == CloseCode.SESSION_TAKEN_OVER
        assert not [f for f in frames if isinstance(f, Deliver)], "delivered beside the new holder"
        await ws2.close()
