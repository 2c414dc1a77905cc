"""The scheduler process: follows which nodes are registered, for dispatching jobs to them."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError
from websockets.asyncio.server import Server

from ackwire.bus import subjects
from ackwire.bus.broker import connect_broker, new_broker
from ackwire.bus.models import NodeRegistration
from ackwire.probes import Probes, serve_probes
from ackwire.settings import Settings

_log = structlog.get_logger("ackwire.scheduler")


class Scheduler:
    def __init__(self, settings: Settings, *, name: str, host: str) -> None:
        self._name = subjects.service_token(name)
        self._settings = settings
        self._host = host
        self._draining = False
        self._broker = new_broker(settings, self._name, stopping=lambda: self._draining)
        self._nodes: dict[str, NodeRegistration] = {}
        self._watch: asyncio.Task[None] | None = None
        self._probes: Server | None = None

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
        if self._watch is None or not self._broker.connection.is_connected:
            return "not connected to NATS"
        return None

    async def start(self) -> None:
        self._probes = await serve_probes(
            self._host, self._settings.http_port, Probes(self.readiness)
        )
        js = await connect_broker(self._broker, self._settings)
        kv = await js.key_value(subjects.NODES_BUCKET)
        self._watch = asyncio.create_task(self._follow_nodes(kv))
        await self._broker.start()
        _log.info("scheduler.serving")

    async def drain(self) -> None:
        self._draining = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._broker.stop()
        if self._probes is not None:
            self._probes.close()
            await self._probes.wait_closed()
        _log.info("scheduler.stopped")

    async def _follow_nodes(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is not None:  # `None` marks the end of the initial values
                    self._apply(entry)
        finally:
            # Unsubscribe now: a watch left open holds up the connection's drain.
            await watcher.stop()  # type: ignore[no-untyped-call]

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
