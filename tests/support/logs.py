"""Capturing structlog events in tests, and awaiting one without sleeping."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog


class LogWatch:
    """A structlog processor that keeps every event and wakes whoever waits for one."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._waiters: list[tuple[str, dict[str, Any], asyncio.Event]] = []

    def __call__(self, _logger: object, method: str, event: dict[str, Any]) -> Any:
        self.events.append({**event, "log_level": method})
        for name, fields, arrived in self._waiters:
            if _matches(event, name, fields):
                arrived.set()
        raise structlog.DropEvent

    def named(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if _matches(e, name, fields)]

    async def wait_for(self, name: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The first event called `name` with these fields, waiting up to `timeout` seconds."""
        if not self.named(name, **fields):
            waiter = (name, fields, asyncio.Event())
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter[2].wait(), timeout)
            finally:
                self._waiters.remove(waiter)
        return self.named(name, **fields)[0]


def _matches(event: dict[str, Any], name: str, fields: dict[str, Any]) -> bool:
    return event.get("event") == name and all(event.get(k) == v for k, v in fields.items())
