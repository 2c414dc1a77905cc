"""The node process: registers its job kinds on the bus and keeps the registration alive."""

from __future__ import annotations

import os

import structlog
from pydantic import BaseModel

from ackwire.bus import subjects
from ackwire.bus.broker import ServiceBroker
from ackwire.bus.lease import Lease
from ackwire.bus.models import NodeRegistration
from ackwire.bus.session_queue import SessionQueue
from ackwire.jobs.ledger import JobLedger
from ackwire.jobs.records import JobRecords
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
        self._lease: Lease | None = None

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
        nc = self._bus.broker.connection
        queue = SessionQueue(nc, js)
        self._worker = Worker(
            nc,
            JobRecords(nc, queue, JobLedger.from_settings(self._settings)),
            queue,
            self._settings,
            node=self._name,
            kinds=self._kinds,
            capacity=self._capacity,
        )
        await self._worker.start()
        self._lease = Lease(
            await js.key_value(subjects.NODES_BUCKET),
            subjects.node_key(self._name),
            self._registration,
            every=self._settings.lease_heartbeat_s,
        )
        await self._lease.take()
        await self._bus.serve()
        _log.info("node.registered", kinds=self._registration.kinds)

    async def drain(self) -> None:
        if self._worker is not None:
            await self._worker.drain()
        if self._lease is not None:
            await self._lease.release()
        await self._bus.stop()
        _log.info("node.stopped")
