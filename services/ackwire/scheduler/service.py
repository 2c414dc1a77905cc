"""The scheduler process: follows which nodes are registered, for dispatching jobs to them."""

from __future__ import annotations

import asyncio

import structlog
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from ackwire.bus import subjects
from ackwire.bus.broker import ServiceBroker
from ackwire.bus.models import NodeRegistration
from ackwire.lifecycle import cancel_and_wait
from ackwire.settings import Settings

_log = structlog.get_logger("ackwire.scheduler")


class Scheduler:
    def __init__(self, settings: Settings, *, name: str, host: str) -> None:
        self._name = subjects.service_token(name)
        self._bus = ServiceBroker(settings, name=self._name, http_host=host)
        self._nodes: dict[str, NodeRegistration] = {}
        self._watcher: KeyValue.KeyWatcher | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def url(self) -> None:
        return None

    @property
    def nodes(self) -> dict[str, NodeRegistration]:
        """The nodes registered now, by name."""
        return dict(self._nodes)

    def readiness(self) -> str | None:
        return self._bus.readiness()

    async def start(self) -> None:
        js = await self._bus.connect()
        kv = await js.key_value(subjects.NODES_BUCKET)
        # Subscribed here, not inside the task: a drain right after start must find the
        # watch and close it (an open watch holds up the connection's drain).
        self._watcher = await kv.watchall()
        self._watch = asyncio.create_task(self._follow_nodes(self._watcher))
        await self._bus.serve()
        _log.info("scheduler.serving")

    async def drain(self) -> None:
        await cancel_and_wait(self._watch)
        if self._watcher is not None:
            await self._watcher.stop()  # type: ignore[no-untyped-call]
        await self._bus.stop()
        _log.info("scheduler.stopped")

    async def _follow_nodes(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:  # `None` marks the end of the initial values
                self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            if self._nodes.pop(entry.key, None) is not None:
                _log.info("node.gone", node=entry.key)
            return
        try:
            registration = NodeRegistration.model_validate_json(entry.value or b"")
        except ValidationError as exc:
            _log.warning("node.bad_registration", node=entry.key, error=str(exc))
            return
        if entry.key not in self._nodes:
            _log.info("node.joined", node=entry.key, kinds=registration.kinds)
        self._nodes[entry.key] = registration
