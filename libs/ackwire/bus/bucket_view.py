"""A live, in-memory view of a small KV bucket: its current entries, as models."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog
from nats.errors import Error as NatsError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import BaseModel, ValidationError

from ackwire.lifecycle import cancel_and_wait

M = TypeVar("M", bound=BaseModel)

_log = structlog.get_logger("ackwire.bus")


class BucketView(Generic[M]):
    """Follows a bucket: entries written, deleted (a goodbye) and expired (a lease that
    lapsed). Meant for buckets of tens of keys (nodes, gateways), not one per session.

    `what` names an entry in log lines (`node.joined`, `gateway.gone`); `on_change`
    runs after every change, to keep a derived view in step; `on_expired` gets the
    last value of an entry that expired (its owner died without deleting it).
    """

    def __init__(
        self,
        model: type[M],
        *,
        what: str,
        on_change: Callable[[], None] = lambda: None,
        on_expired: Callable[[M], None] = lambda _value: None,
    ) -> None:
        self._model = model
        self._what = what
        self._on_change = on_change
        self._on_expired = on_expired
        self._entries: dict[str, M] = {}
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def entries(self) -> dict[str, M]:
        return self._entries

    async def follow(self, kv: KeyValue) -> None:
        """Start following; returns once the bucket's current entries are in the view."""
        # Subscribed here, not inside the task: a stop right after must find the watch
        # and close it (an open watch holds up the connection's drain).
        self._watcher = await kv.watchall()
        loaded = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(self._watcher, loaded), name=self._what)
        await asyncio.wait([loaded, self._task], return_when=asyncio.FIRST_COMPLETED)

    async def stop(self) -> None:
        """Stop following. Idempotent; harmless when NATS is already gone."""
        await cancel_and_wait(self._task)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(NatsError):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _run(self, watcher: KeyValue.KeyWatcher, loaded: asyncio.Future[None]) -> None:
        async for entry in watcher:
            if entry is None:  # the end of the initial values
                if not loaded.done():
                    loaded.set_result(None)
                continue
            self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            gone = self._entries.pop(entry.key, None)
            if gone is not None:
                expired = entry.operation == KV_PURGE  # a goodbye is a delete
                _log.info(f"{self._what}.gone", **{self._what: entry.key}, expired=expired)
                self._on_change()
                if expired:
                    self._on_expired(gone)
            return
        try:
            value = self._model.model_validate_json(entry.value or b"")
        except ValidationError as exc:
            _log.warning(f"{self._what}.unreadable", **{self._what: entry.key}, error=str(exc))
            return
        if self._entries.get(entry.key) is None:
            _log.info(f"{self._what}.joined", **{self._what: entry.key})
        self._entries[entry.key] = value
        self._on_change()
