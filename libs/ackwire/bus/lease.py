"""A key kept alive in a bucket whose entries expire: a service's proof of life.

The bucket's TTL is three heartbeats, so a service killed without goodbye
disappears within three heartbeats, and watchers of the bucket see it go.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue

from ackwire.bus.models import BusModel
from ackwire.lifecycle import cancel_and_wait

_log = structlog.get_logger("ackwire.bus")

_BUS_ERRORS = (NatsError, JetStreamError, TimeoutError)


class Lease:
    def __init__(self, kv: KeyValue, key: str, value: BusModel, *, every: float) -> None:
        self._kv = kv
        self._key = key
        self._value = value.to_bytes()
        self._every = every
        self._task: asyncio.Task[None] | None = None

    async def take(self) -> None:
        """Write the key (raises if the bus did not confirm it), then keep it fresh."""
        await self._kv.put(self._key, self._value)
        self._task = asyncio.create_task(self._refresh(), name=f"lease {self._key}")

    async def release(self) -> None:
        """Stop refreshing and delete the key: a goodbye. Harmless when NATS is gone."""
        await cancel_and_wait(self._task)
        with contextlib.suppress(*_BUS_ERRORS):
            await self._kv.delete(self._key)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self._kv.put(self._key, self._value)
            except _BUS_ERRORS as exc:
                _log.warning(
                    "lease.refresh_failed", key=self._key, error=str(exc) or type(exc).__name__
                )
