"""The seed's worker that crash-looped on ECONNREFUSED: here it waits and connects."""

import asyncio
from pathlib import Path

from ackwire.bus.connect import connect_nats
from ackwire.bus.embedded import EmbeddedNats, free_port
from support.logs import LogWatch


async def test_a_client_started_before_nats_waits_then_connects(
    tmp_path: Path, logs: LogWatch
) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    connecting = asyncio.create_task(connect_nats([url], name="early"))
    first = await logs.wait_for("nats.unreachable", timeout=10)
    assert first["servers"] == [url]
    assert first["retry_in_s"] > 0
    await logs.wait_for(
        "nats.unreachable", attempt=2, timeout=10
    )  # it retries, it does not give up
    assert not connecting.done()
    async with EmbeddedNats(tmp_path, port=port):
        nc = await asyncio.wait_for(connecting, 15)
        assert nc.is_connected
        await nc.close()
    assert logs.named("nats.connected")[0]["attempts"] >= 3


async def test_once_connected_a_client_rides_out_a_nats_restart(
    tmp_path: Path, logs: LogWatch
) -> None:
    port = free_port()
    server = EmbeddedNats(tmp_path, port=port)
    await server.start()
    nc = await connect_nats([server.url], name="survivor")
    try:
        await server.stop()
        await logs.wait_for("nats.disconnected")
        await server.start()
        await logs.wait_for("nats.reconnected", timeout=15)
        assert nc.is_connected
    finally:
        await nc.close()
        await server.stop()
