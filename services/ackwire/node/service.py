"""The node process: registers its job kinds on the bus and keeps the registration alive."""

from __future__ import annotations

import asyncio
import contextlib
import os

import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from ackwire.bus import subjects
from ackwire.bus.broker import ServiceBroker
from ackwire.bus.models import NodeRegistration
from ackwire.lifecycle import cancel_and_wait
from ackwire.node.worker import Worker
from ackwire.nodekit import JobKind
from ackwire.settings import Settings

_log = structlog.get_logger("ackwire.node")


class Node:
    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        kinds: dict[str, JobKind[BaseModel, BaseModel]],
        capacity: int,
        host: str,
    ) -> None:
        self._name = subjects.service_token(name)
        self._settings = settings
        self._kinds = kinds
        self._capacity = capacity
        self._registration = NodeRegistration(
            name=self._name,
            kinds=list(kinds),
            schemas={name: kind.payload_schema() for name, kind in kinds.items()},
            capacity=capacity,
            pid=os.getpid(),
        )
        self._worker: Worker | None = None
        self._bus = ServiceBroker(settings, name=self._name, http_host=host)
        self._kv: KeyValue | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def url(self) -> None:
        return None

    def readiness(self) -> str | None:
        return self._bus.readiness()

    async def start(self) -> None:
        js = await self._bus.connect()
        self._worker = Worker(
            js, self._settings, node=self._name, kinds=self._kinds, capacity=self._capacity
        )
        await self._worker.start()
        self._kv = await js.key_value(subjects.NODES_BUCKET)
        await self._kv.put(subjects.node_key(self._name), self._registration.to_bytes())
        self._heartbeat = asyncio.create_task(self._keep_registered(self._kv))
        await self._bus.serve()
        _log.info("node.registered", kinds=self._registration.kinds)

    async def drain(self) -> None:
        if self._worker is not None:
            await self._worker.drain()
        await cancel_and_wait(self._heartbeat)
        if self._kv is not None:
            with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                await self._kv.delete(subjects.node_key(self._name))
        await self._bus.stop()
        _log.info("node.stopped")

    async def _keep_registered(self, kv: KeyValue) -> None:
        """Refresh the registration every heartbeat; the bucket's TTL drops a node that stops."""
        while True:
            await asyncio.sleep(self._settings.node_heartbeat_s)
            try:
                await kv.put(subjects.node_key(self._name), self._registration.to_bytes())
            except (NatsError, JetStreamError, TimeoutError) as exc:
                _log.warning("node.heartbeat_failed", error=str(exc) or type(exc).__name__)
