"""What every scenario's clients do first: open a WebSocket to a gateway and say hello."""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from ackwire.bench import BenchFailedError
from ackwire.wire import encode, parse_server_frame
from ackwire.wire.frames import SUBPROTOCOL, Hello, Welcome


async def open_session(url: str, hello: Hello) -> tuple[ClientConnection, Welcome]:
    """The socket and the `welcome` that answered `hello` (a new session or a resume)."""
    ws = await connect(
        url, subprotocols=[Subprotocol(SUBPROTOCOL)], compression=None, ping_interval=None
    )
    await ws.send(encode(hello))
    welcome = parse_server_frame(await ws.recv())
    if not isinstance(welcome, Welcome):
        await ws.close()
        raise BenchFailedError(f"expected a welcome, got {welcome!r}")
    return ws, welcome
