"""The node process: registers its job kinds on the bus and keeps the registration alive."""

from __future__ import annotations

import asyncio
import contextlib
import os

import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue
from websockets.asyncio.server import Server

from ackwire.bus import subjects
from ackwire.bus.broker import connect_broker, new_broker
from ackwire.bus.models import NodeRegistration
from ackwire.probes import Probes, serve_probes
from ackwire.settings import Settings

_log = structlog.get_logger("ackwire.node")


class Node:
    def __init__(
        self, settings: Settings, *, name: str, kinds: list[str], capacity: int, host: str
    ) -> None:
        self._name = subjects.service_token(name)
        self._settings = settings
        self._host = host
        self._registration = NodeRegistration(
            name=self._name, kinds=kinds, capacity=capacity, pid=os.getpid()
        )
        self._draining = False
        self._broker = new_broker(settings, self._name, stopping=lambda: self._draining)
        self._kv: KeyValue | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._probes: Server | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def url(self) -> None:
        return None

    def readiness(self) -> str | None:
        if self._kv is None or not self._broker.connection.is_connected:
            return "not connected to NATS"
        return None

    async def start(self) -> None:
        self._probes = await serve_probes(
            self._host, self._settings.http_port, Probes(self.readiness)
        )
        js = await connect_broker(self._broker, self._settings)
        kv = await js.key_value(subjects.NODES_BUCKET)
        await kv.put(subjects.node_key(self._name), self._registration.to_bytes())
        self._kv = kv
        self._heartbeat = asyncio.create_task(self._keep_registered(kv))
        await self._broker.start()
        _log.info("node.registered", kinds=self._registration.kinds)

    async def drain(self) -> None:
        self._draining = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._kv is not None:
            with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                await self._kv.delete(subjects.node_key(self._name))
        await self._broker.stop()
        if self._probes is not None:
            self._probes.close()
            await self._probes.wait_closed()
        _log.info("node.stopped")

    async def _keep_registered(self, kv: KeyValue) -> None:
        """Refresh the registration every heartbeat; the bucket's TTL drops a node that stops."""
        while True:
            await asyncio.sleep(self._settings.node_heartbeat_s)
            try:
                await kv.put(subjects.node_key(self._name), self._registration.to_bytes())
            except (NatsError, JetStreamError, TimeoutError) as exc:
                _log.warning("node.heartbeat_failed", error=str(exc) or type(exc).__name__)
