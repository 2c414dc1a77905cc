import asyncio

from ackwire.bus.broker import ServiceBroker
from ackwire.bus.embedded import EmbeddedNats
from ackwire.settings import Settings


async def test_a_service_broker_reports_readiness_and_stops_even_without_nats(
    nats_server: EmbeddedNats, settings: Settings
) -> None:
    bus = ServiceBroker(settings, name="svc-test", http_host="127.0.0.1")
    assert bus.readiness() == "not connected to NATS"
    await bus.connect()
    assert bus.readiness() == "not connected to NATS"  # connected, but not serving yet
    await bus.serve()
    assert bus.readiness() is None
    await nats_server.stop()
    await asyncio.wait_for(bus.stop(), 10)
    assert bus.readiness() == "draining"
