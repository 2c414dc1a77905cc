"""Fixtures of the gateway tests: two gateways on one NATS, and a backend's publisher."""

from collections.abc import AsyncIterator

import nats
import pytest

from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.provision import provision
from ackwire.gateway.server import Gateway
from ackwire.publisher import Publisher
from ackwire.settings import Settings


@pytest.fixture
async def two_gateways(settings: Settings) -> AsyncIterator[tuple[Gateway, Gateway]]:
    tuned = settings.model_copy(update={"lease_heartbeat_s": 0.5})
    async with (
        Gateway(tuned, name="gw-1", host="127.0.0.1", port=0) as gw1,
        Gateway(tuned, name="gw-2", host="127.0.0.1", port=0) as gw2,
    ):
        yield gw1, gw2


@pytest.fixture
async def publisher(nats_server: EmbeddedNats, settings: Settings) -> AsyncIterator[Publisher]:
    nc = await nats.connect(nats_server.url)
    await provision(nc.jetstream(), settings)
    yield Publisher(nc, max_frame_bytes=settings.max_frame_bytes)  # configured like its gateways
    await nc.close()
