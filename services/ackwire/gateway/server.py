"""The gateway process: a WebSocket server on one port, connected to NATS."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Sequence

import structlog
from nats.aio.client import Client
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import NegotiationError
from websockets.typing import Subprotocol

from ackwire.bus import subjects
from ackwire.bus.connect import Overflows, connect_nats, leave_nats
from ackwire.bus.lease import Lease
from ackwire.bus.models import GatewayRecord
from ackwire.bus.nodes import NodeDirectory
from ackwire.bus.provision import provision
from ackwire.bus.receipts import Receipts
from ackwire.bus.session_queue import SessionQueue
from ackwire.bus.topics import TopicStore
from ackwire.gateway.connection import ClientConnection, GatewayContext
from ackwire.gateway.presence import PresenceNotices
from ackwire.gateway.sessions import HeldSessions
from ackwire.gateway.topics import TopicHub
from ackwire.gateway.web import WebPages
from ackwire.lifecycle import BackgroundTasks
from ackwire.probes import Probes
from ackwire.sessions.gateways import GatewayDirectory
from ackwire.sessions.table import SessionTable
from ackwire.sessions.users import UserSessions
from ackwire.settings import Settings
from ackwire.tokens import TokenVerifier, refuse_development_secret_beyond_loopback
from ackwire.wire.codes import CloseCode
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
        refuse_development_secret_beyond_loopback(settings, host)
        self._name = subjects.service_token(name)
        self._settings = settings
        self._host = host
        self._port = port
        self._verifier = TokenVerifier(settings)
        self._nc: Client | None = None
        self._server: Server | None = None
        self._draining = False
        self._nodes = NodeDirectory()
        self._gateways: GatewayDirectory | None = None
        self._presence: PresenceNotices | None = None
        # A restart under the same name is another incarnation: it holds nothing yet.
        self._incarnation = secrets.token_hex(8)
        self._sessions: HeldSessions | None = None
        self._topic_hub: TopicHub | None = None
        self._lease: Lease | None = None
        self._rechecks = BackgroundTasks()

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

    def gateway_urls(self) -> list[str]:
        """This gateway's URL first, then every other live gateway's."""
        others = {} if self._gateways is None else self._gateways.gateways
        return [self.url, *(gw.url for name, gw in sorted(others.items()) if name != self._name)]

    def _refusing(self) -> str | None:
        """Why a new WebSocket upgrade is answered 503 now, if it is."""
        return "draining" if self._draining else None

    async def start(self) -> None:
        """Connect to NATS (waiting for it if need be), then listen."""
        if self._settings.uses_development_secret:
            _log.warning("auth.development_secret", hint="set ACKWIRE_JWT_SECRET")
        overflows = Overflows()
        self._nc = await connect_nats(
            self._settings.nats_servers,
            name=self._name,
            stopping=lambda: self._draining,
            reconnected=self._recheck_sessions,
            overflows=overflows,
        )
        js = self._nc.jetstream()
        await provision(js, self._settings)
        await self._nodes.follow(await js.key_value(subjects.NODES_BUCKET))
        topics = await TopicStore.open(self._nc, overflows)
        self._presence = PresenceNotices(topics, self._name)
        self._gateways = GatewayDirectory(on_expired=self._presence.gateway_expired)
        gateways_kv = await js.key_value(subjects.GATEWAYS_BUCKET)
        await self._gateways.follow(gateways_kv)
        queue = SessionQueue(self._nc, js, overflows, replicated=self._settings.replicas > 1)
        self._topic_hub = TopicHub(topics, pending_limit=4 * self._settings.topic_buffer)
        self._sessions = HeldSessions(
            self._nc,
            await SessionTable.open(js),
            await UserSessions.open(js),
            queue,
            self._gateways,
            gateway=self._name,
            incarnation=self._incarnation,
            ttl_s=self._settings.session_ttl_s,
        )
        await self._sessions.start()
        context = GatewayContext(
            name=self._name,
            settings=self._settings,
            verifier=self._verifier,
            sessions=self._sessions,
            topics=self._topic_hub,
            presence=self._presence,
            queue=queue,
            receipts=Receipts(self._nc),
            js=js,
            nodes=self._nodes,
        )

        async def handler(ws: ServerConnection) -> None:
            await ClientConnection(ws, context).run()

        heartbeat = self._settings.heartbeat_s
        pages = WebPages(self._settings, host=self._host, gateway_urls=self.gateway_urls)
        self._server = await serve(
            handler,
            self._host,
            self._port,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            select_subprotocol=select_subprotocol,
            process_request=Probes(
                self.readiness, refusing_upgrades=self._refusing, pages=pages.respond
            ).respond,
            max_size=self._settings.max_frame_bytes,
            compression="deflate" if self._settings.ws_compression else None,
            ping_interval=heartbeat,
            ping_timeout=2 * heartbeat,
        )
        self._lease = Lease(
            gateways_kv,
            subjects.gateway_key(self._name),
            GatewayRecord(
                name=self._name, incarnation=self._incarnation, url=self.url, pid=os.getpid()
            ),
            every=self._settings.lease_heartbeat_s,
        )
        await self._lease.take()
        _log.info("gateway.listening", url=self.url, incarnation=self._incarnation)

    def _recheck_sessions(self) -> None:
        """Back on NATS after a loss: a takeover may have been missed meanwhile."""
        if self._sessions is None or self._draining:
            return
        self._sessions.resync()
        if self._topic_hub is not None:
            self._topic_hub.resync()
        self._rechecks.spawn(self._sessions.refresh(), name="session recheck")

    async def drain(self) -> None:
        """Stop taking connections, close every client with 1001, then leave NATS.

        The port stays open while the clients close, answering `/readyz` and new
        upgrades with 503 (a load balancer sees a gateway going, not a refused port);
        each close is bounded by websockets' close timeout."""
        self._draining = True
        if self._sessions is not None:
            await self._sessions.drain()  # 1001 to each client, once its acks are confirmed
        if self._server is not None:  # connections that held no session yet
            closing = [
                asyncio.create_task(ws.close(CloseCode.GOING_AWAY))
                for ws in self._server.connections
            ]
            if closing:
                await asyncio.wait(closing)
            self._server.close(close_connections=True)  # and any that opened meanwhile
            await self._server.wait_closed()  # every connection has recorded its detach
        await self._rechecks.cancel()
        if self._sessions is not None:
            await self._sessions.stop()
        if self._lease is not None:
            await self._lease.release()
        if self._gateways is not None:
            await self._gateways.stop()
        if self._presence is not None:
            await self._presence.stop()
        await self._nodes.stop()
        if self._nc is not None:
            await leave_nats(self._nc)
        _log.info("gateway.drained")

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.drain()
