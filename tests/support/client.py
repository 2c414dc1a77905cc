"""A raw WebSocket client for tests: frames in, frames out, every wait bounded."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Opcode
from websockets.frames import Frame as WsFrame
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


class SilentClient:
    """A client over websockets' sans-I/O client protocol on a bare TCP stream: it writes
    nothing the test does not `flush`, so no pong and no close reply go out behind the
    test's back."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.protocol = protocol
        self._events: list[WsFrame] = []

    @classmethod
    async def connect(cls, url: str, hello: Hello, *, rcvbuf: int | None = None) -> SilentClient:
        """Open, complete the handshake and send `hello`. `rcvbuf`: a small receive buffer,
        so that a client that stops reading pushes back on the gateway at once (the
        kernel would otherwise buffer megabytes for it)."""
        uri = parse_uri(url)
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
        reader, writer = await asyncio.wait_for(asyncio.open_connection(sock=sock), WAIT_S)
        client = cls(reader, writer, ClientProtocol(uri, subprotocols=[Subprotocol("ackwire.v1")]))
        client.protocol.send_request(client.protocol.connect())
        client.flush()
        async with asyncio.timeout(WAIT_S):
            while client.protocol.state is not State.OPEN:  # read the handshake response
                assert client.protocol.handshake_exc is None, client.protocol.handshake_exc
                client.protocol.receive_data(await reader.read(65536))
        client.protocol.events_received()  # the handshake response itself
        client.protocol.send_text(encode(hello).encode())
        client.flush()
        return client

    async def next_event(self) -> WsFrame | None:
        """The next frame from the gateway; `None` once it closed the TCP connection."""
        while not self._events:
            data = await self._reader.read(65536)
            if not data:
                self.protocol.receive_eof()
                return None
            self.protocol.receive_data(data)
            self._events.extend(self.protocol.events_received())
        return self._events.pop(0)

    def send(self, frame: Frame) -> None:
        self.protocol.send_text(encode(frame).encode())
        self.flush()

    def flush(self) -> None:
        """Write what the protocol has queued (say, the reply to a close)."""
        self._writer.write(b"".join(self.protocol.data_to_send()))

    def close(self) -> None:
        self._writer.close()


async def close_code_when_never_answering_pings(
    url: str, hello: Hello, timeout: float
) -> tuple[int, int]:
    """Say hello, then never write again (so no pong goes out): the pings seen and the
    close code."""
    client = await SilentClient.connect(url, hello)
    pings = 0
    try:
        async with asyncio.timeout(timeout):
            while (event := await client.next_event()) is not None:
                if event.opcode is Opcode.PING:
                    pings += 1
                if event.opcode is Opcode.CLOSE:
                    return pings, Close.parse(event.data).code
    finally:
        client.close()
    raise AssertionError("the gateway never closed the connection")
