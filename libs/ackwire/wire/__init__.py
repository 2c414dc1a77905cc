"""The ackwire v1 client protocol, sans I/O: frames, codes, parsing and the rules.

Nothing here imports asyncio, nats or websockets; the gateway and the client
SDK drive these classes and move the bytes themselves.
"""

from ackwire.wire.codec import BadFrame, encode, parse_client_frame, parse_server_frame
from ackwire.wire.codes import CloseCode, ErrorCode
from ackwire.wire.frames import SUBPROTOCOL, ClientFrame, ServerFrame

__all__ = [
    "SUBPROTOCOL",
    "BadFrame",
    "ClientFrame",
    "CloseCode",
    "ErrorCode",
    "ServerFrame",
    "encode",
    "parse_client_frame",
    "parse_server_frame",
]
