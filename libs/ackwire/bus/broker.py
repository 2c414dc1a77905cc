"""FastStream's NATS broker, hosted the same way by every bus-only service (scheduler, node)."""

from __future__ import annotations

import logging

import structlog
from faststream.nats import NatsBroker
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from websockets.asyncio.server import Server

from ackwire.bus.connect import (
    client_options,
    keep_reconnecting,
    leave_nats,
    until_connected,
)
from ackwire.bus.provision import provision
from ackwire.probes import Probes, serve_probes
from ackwire.settings import Settings


class ServiceBroker:
    """One service's broker and health probes: connect (waiting for NATS as long as it
    takes), provision the bus, serve subscribers, and drain."""

    def __init__(self, settings: Settings, *, name: str, http_host: str) -> None:
        self._settings = settings
        self._http_host = http_host
        self._draining = False
        self._serving = False
        self._probes: Server | None = None
        self.broker = NatsBroker(
            **client_options(settings.nats_servers, name, stopping=lambda: self._draining),
            logger=structlog.get_logger("faststream"),
            # FastStream's per-message "Received"/"Processed" lines: debug, not info.
            log_level=logging.DEBUG,
        )

    def readiness(self) -> str | None:
        if self._draining:
            return "draining"
        if not self._serving or not self.broker.connection.is_connected:
            return "not connected to NATS"
        return None

    async def connect(self) -> JetStreamContext:
        """Answer probes, connect, provision; subscribers start with `serve`."""
        self._probes = await serve_probes(
            self._http_host, self._settings.http_port, Probes(self.readiness)
        )
        keep_reconnecting(await until_connected(self.broker.connect, self._settings.nats_servers))
        js = self.broker.connection.jetstream()
        await provision(js, self._settings)
        return js

    async def serve(self) -> None:
        await self.broker.start()
        self._serving = True

    async def stop(self) -> None:
        self._draining = True
        connection = self.broker.connection if self._serving else None
        try:
            await self.broker.stop()
        except (NatsError, TimeoutError):  # NATS is away: there is nothing left to flush
            if connection is not None:
                await leave_nats(connection)
        if self._probes is not None:
            self._probes.close()
            await self._probes.wait_closed()
