"""The scheduler process: owns every job's life, and follows which nodes serve which kinds."""

from __future__ import annotations

import asyncio

import structlog

from ackwire.bus import subjects
from ackwire.bus.broker import ServiceBroker
from ackwire.bus.models import NodeRegistration
from ackwire.bus.nodes import NodeDirectory
from ackwire.bus.receipts import Receipts
from ackwire.bus.session_queue import SessionQueue
from ackwire.jobs.ledger import JobLedger
from ackwire.jobs.records import JobRecords
from ackwire.lifecycle import cancel_and_wait
from ackwire.scheduler.expiry import ExpirySweeper
from ackwire.scheduler.jobs import JobTimers
from ackwire.settings import Settings

_log = structlog.get_logger("ackwire.scheduler")


class Scheduler:
    def __init__(self, settings: Settings, *, name: str, host: str) -> None:
        self._name = subjects.service_token(name)
        self._bus = ServiceBroker(settings, name=self._name, http_host=host)
        self._directory = NodeDirectory()
        self._timers = JobTimers(settings, self._directory)
        self._settings = settings
        self._sweeping: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def url(self) -> None:
        return None

    @property
    def nodes(self) -> dict[str, NodeRegistration]:
        """The nodes registered now, by name."""
        return self._directory.nodes

    def readiness(self) -> str | None:
        return self._bus.readiness()

    async def start(self) -> None:
        js = await self._bus.connect()
        nc = self._bus.broker.connection
        queue = SessionQueue(nc, js)
        sweeper = ExpirySweeper(
            queue,
            Receipts(nc),
            js,
            retention_s=self._settings.retention_s,
            every_s=self._settings.expiry_sweep_s,
        )
        self._sweeping = asyncio.create_task(sweeper.run(), name="expiry sweeper")
        await self._directory.follow(await js.key_value(subjects.NODES_BUCKET))
        await self._timers.start(nc, JobRecords(nc, queue, JobLedger.from_settings(self._settings)))
        await self._bus.serve()
        _log.info("scheduler.serving")

    async def drain(self) -> None:
        await self._timers.drain()
        await cancel_and_wait(self._sweeping)
        await self._directory.stop()
        await self._bus.stop()
        _log.info("scheduler.stopped")
