"""The gateway process: a WebSocket server on one port, connected to NATS."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from nats.aio.client import Client
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import NegotiationError
from websockets.typing import Subprotocol

from ackwire.bus import subjects
from ackwire.bus.connect import connect_nats, leave_nats
from ackwire.bus.nodes import NodeDirectory
from ackwire.bus.provision import provision
from ackwire.bus.session_queue import SessionQueue
from ackwire.gateway.connection import ClientConnection, GatewayContext
from ackwire.gateway.presence import PresenceTable
from ackwire.probes import Probes
from ackwire.settings import Settings
from ackwire.tokens import TokenVerifier
from ackwire.wire.frames import SUBPROTOCOL

_log = structlog.get_logger("ackwire.gateway")


def select_subprotocol(
    _connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """protocol.md, Transport: select `ackwire.v1` when offered; accept a client offering none."""
    if SUBPROTOCOL in offered:
        return Subprotocol(SUBPROTOCOL)
    if offered:
        raise NegotiationError(f"this gateway speaks {SUBPROTOCOL} only")
    return None


class Gateway:
    def __init__(self, settings: Settings, *, name: str, host: str, port: int) -> None:
        self._name = subjects.service_token(name)
        self._settings = settings
        self._host = host
        self._port = port
        self._verifier = TokenVerifier(settings)
        self._nc: Client | None = None
        self._server: Server | None = None
        self._draining = False
        self._nodes = NodeDirectory()

    @property
    def name(self) -> str:
        return self._name

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the gateway is not serving")
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}"

    def readiness(self) -> str | None:
        if self._draining:
            return "draining"
        if self._nc is None or not self._nc.is_connected:
            return "not connected to NATS"
        return None

    async def start(self) -> None:
        """Connect to NATS (waiting for it if need be), then listen."""
        if self._settings.uses_development_secret:
            _log.warning("auth.development_secret", hint="set ACKWIRE_JWT_SECRET")
        self._nc = await connect_nats(
            self._settings.nats_servers, name=self._name, stopping=lambda: self._draining
        )
        js = self._nc.jetstream()
        await provision(js, self._settings)
        await self._nodes.follow(await js.key_value(subjects.NODES_BUCKET))
        context = GatewayContext(
            name=self._name,
            settings=self._settings,
            verifier=self._verifier,
            presence=PresenceTable(await js.key_value(subjects.PRESENCE_BUCKET)),
            queue=SessionQueue(self._nc, js),
            js=js,
            nodes=self._nodes,
        )

        async def handler(ws: ServerConnection) -> None:
            await ClientConnection(ws, context).run()

        heartbeat = self._settings.heartbeat_s
        self._server = await serve(
            handler,
            self._host,
            self._port,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            select_subprotocol=select_subprotocol,
            process_request=Probes(self.readiness).respond,
            max_size=self._settings.max_frame_bytes,
            compression="deflate" if self._settings.ws_compression else None,
            ping_interval=heartbeat,
            ping_timeout=2 * heartbeat,
        )
        _log.info("gateway.listening", url=self.url)

    async def drain(self) -> None:
        """Stop taking connections, close every client with 1001, then leave NATS."""
        self._draining = True
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
        await self._nodes.stop()
        if self._nc is not None:
            await leave_nats(self._nc)
        _log.info("gateway.drained")

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.drain()
