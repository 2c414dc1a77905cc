"""Which nodes are registered now, and which kinds they serve: a view kept from the bucket."""

from __future__ import annotations

import asyncio
import contextlib
import json

import structlog
from nats.errors import Error as NatsError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from ackwire.bus.models import NodeRegistration
from ackwire.lifecycle import cancel_and_wait

_log = structlog.get_logger("ackwire.bus")


class NodeDirectory:
    """Follows the nodes bucket: joins, leaves (drain), and expiries (a node killed)."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeRegistration] = {}
        # Derived from `_nodes` when a registration changes, not on every submit.
        self._schemas: dict[str, str] = {}
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def nodes(self) -> dict[str, NodeRegistration]:
        return dict(self._nodes)

    def payload_schema(self, kind: str) -> str | None:
        """The JSON text of the payload schema a node serving `kind` registered ("{}" when
        it registered none); `None` when no node serves `kind`."""
        return self._schemas.get(kind)

    async def follow(self, kv: KeyValue) -> None:
        # Subscribed here, not inside the task: a stop right after must find the watch
        # and close it (an open watch holds up the connection's drain).
        self._watcher = await kv.watchall()
        self._task = asyncio.create_task(self._run(self._watcher), name="node directory")

    async def stop(self) -> None:
        """Stop following. Idempotent; harmless when NATS is already gone."""
        await cancel_and_wait(self._task)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(NatsError):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _run(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:  # `None` marks the end of the initial values
                self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            if self._nodes.pop(entry.key, None) is not None:
                _log.info("node.gone", node=entry.key)
                self._schemas = _schemas(self._nodes)
            return
        try:
            registration = NodeRegistration.model_validate_json(entry.value or b"")
        except ValidationError as exc:
            _log.warning("node.bad_registration", node=entry.key, error=str(exc))
            return
        known = self._nodes.get(entry.key)
        if known is None:
            _log.info("node.joined", node=entry.key, kinds=registration.kinds)
        self._nodes[entry.key] = registration
        if known is None or (known.kinds, known.schemas) != (
            registration.kinds,
            registration.schemas,
        ):
            self._schemas = _schemas(self._nodes)


def _schemas(nodes: dict[str, NodeRegistration]) -> dict[str, str]:
    return {
        kind: json.dumps(node.schemas.get(kind, {}), sort_keys=True)
        for node in nodes.values()
        for kind in node.kinds
    }
