"""FastStream's NATS broker, set up the same way for every service."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from ackwire.bus.connect import client_options, keep_reconnecting, until_connected
from ackwire.bus.provision import provision
from ackwire.settings import Settings


def new_broker(settings: Settings, name: str, stopping: Callable[[], bool]) -> NatsBroker:
    return NatsBroker(
        **client_options(settings.nats_servers, name, stopping),
        logger=structlog.get_logger("faststream"),
    )


async def connect_broker(broker: NatsBroker, settings: Settings) -> JetStreamContext:
    """Connect (waiting for NATS as long as it takes) and provision the bus."""
    keep_reconnecting(await until_connected(broker.connect, settings.nats_servers))
    js = broker.connection.jetstream()
    await provision(js, settings)
    return js
