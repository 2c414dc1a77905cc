"""Who is connected where, kept on the bus for every gateway and backend to see."""

from __future__ import annotations

import asyncio

import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue

from ackwire.bus.models import PresenceRecord
from ackwire.bus.subjects import presence_key

_WRITE_TIMEOUT_S = 5.0

_log = structlog.get_logger("ackwire.gateway")


class PresenceTable:
    """The gateway's view onto the presence bucket: one key per connected session."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def connected(self, record: PresenceRecord) -> None:
        """Record a live connection; raises if the bus did not confirm the write."""
        async with asyncio.timeout(_WRITE_TIMEOUT_S):
            await self._kv.put(presence_key(record.user, record.session_id), record.to_bytes())

    async def disconnected(self, record: PresenceRecord) -> None:
        """Remove a connection that ended. A failure is logged, never raised: the
        connection is gone either way."""
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT_S):
                await self._kv.delete(presence_key(record.user, record.session_id))
        except (TimeoutError, NatsError, JetStreamError) as exc:
            _log.warning("presence.unregister_failed", error=str(exc) or type(exc).__name__)
