"""A raw WebSocket client for tests: frames in, frames out, every wait bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Opcode
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ackwire.wire import BadFrame, ServerFrame, encode, parse_server_frame
from ackwire.wire.frames import Deliver, Frame, Hello, ResumeRequest, Welcome

WAIT_S = 5.0


async def open_ws(
    url: str, subprotocols: Sequence[str] | None = ("ackwire.v1",)
) -> ClientConnection:
    offered = None if subprotocols is None else [Subprotocol(p) for p in subprotocols]
    return await asyncio.wait_for(connect(url, subprotocols=offered), WAIT_S)


async def send(ws: ClientConnection, frame: Frame | str | bytes) -> None:
    await ws.send(frame if isinstance(frame, str | bytes) else encode(frame))


async def receive(ws: ClientConnection, timeout: float = WAIT_S) -> ServerFrame:
    data = await asyncio.wait_for(ws.recv(), timeout)
    frame = parse_server_frame(data)
    assert not isinstance(frame, BadFrame), f"the gateway sent a bad frame: {data!r}"
    return frame


async def closed_with(ws: ClientConnection, timeout: float = WAIT_S) -> tuple[int | None, str]:
    """Read until the gateway closes; the close code and reason it sent."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    assert ws.close_code is not None, "the connection is still open"
    return ws.close_code, ws.close_reason or ""


async def welcomed(url: str, token: str) -> tuple[ClientConnection, Welcome]:
    ws = await open_ws(url)
    await send(ws, Hello(token=token))
    welcome = await receive(ws)
    assert isinstance(welcome, Welcome), welcome
    return ws, welcome


def resume_hello(token: str, welcome: Welcome, last_seq: int | None = None) -> Hello:
    """The `hello` that resumes the session `welcome` opened."""
    return Hello(
        token=token,
        resume=ResumeRequest(
            session_id=welcome.session_id, resume_token=welcome.resume_token, last_seq=last_seq
        ),
    )


async def resumed(
    url: str, token: str, welcome: Welcome, last_seq: int | None = None
) -> tuple[ClientConnection, Welcome]:
    """Ask to resume; the `welcome` that answers (check its `resumed` and `reason`)."""
    ws = await open_ws(url)
    await send(ws, resume_hello(token, welcome, last_seq))
    again = await receive(ws)
    assert isinstance(again, Welcome), again
    return ws, again


async def next_deliver(ws: ClientConnection, timeout: float = WAIT_S) -> Deliver:
    frame = await receive(ws, timeout)
    assert isinstance(frame, Deliver), frame
    return frame


async def close_code_when_never_answering_pings(
    url: str, hello: Hello, timeout: float
) -> tuple[int, int]:
    """Say hello, then never write again (so no pong goes out): the pings seen and the close code.

    Uses websockets' sans-I/O client protocol over a bare TCP stream, so nothing
    answers the gateway's pings behind the test's back.
    """
    uri = parse_uri(url)
    reader, writer = await asyncio.open_connection(uri.host, uri.port)
    protocol = ClientProtocol(uri, subprotocols=[Subprotocol("ackwire.v1")])
    protocol.send_request(protocol.connect())
    writer.write(b"".join(protocol.data_to_send()))
    pings = 0
    try:
        async with asyncio.timeout(timeout):
            while protocol.state is not State.OPEN:  # read the handshake response
                assert protocol.handshake_exc is None, protocol.handshake_exc
                protocol.receive_data(await reader.read(65536))
            protocol.events_received()  # the handshake response itself
            protocol.send_text(encode(hello).encode())
            writer.write(b"".join(protocol.data_to_send()))
            while True:
                data = await reader.read(65536)
                if not data:
                    protocol.receive_eof()
                    break
                protocol.receive_data(data)
                for event in protocol.events_received():
                    if event.opcode is Opcode.PING:
                        pings += 1
                    if event.opcode is Opcode.CLOSE:
                        close = Close.parse(event.data)
                        return pings, close.code
                protocol.data_to_send()  # the pongs: dropped on purpose
    finally:
        writer.close()
    raise AssertionError("the gateway never closed the connection")
