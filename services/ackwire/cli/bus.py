"""How the one-shot commands reach NATS: once, briefly, failing in one line."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client

from ackwire.bus.connect import UNREACHABLE
from ackwire.settings import Settings

_CONNECT_WITHIN_S = 5.0


class NatsUnreachableError(Exception):
    pass


async def connect_briefly(settings: Settings) -> Client:
    """A connection for one command; raises `NatsUnreachableError` within five seconds."""

    async def quiet(_exc: Exception) -> None:
        pass  # the failure is reported once, by the caller

    try:
        async with asyncio.timeout(_CONNECT_WITHIN_S):
            return await nats.connect(
                settings.nats_servers,
                name="ackwire-cli",
                connect_timeout=2,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=quiet,
            )
    except UNREACHABLE as exc:
        raise NatsUnreachableError(
            f"NATS unreachable at {settings.nats_url}: {str(exc) or type(exc).__name__}"
        ) from exc
