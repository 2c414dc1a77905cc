"""The seed's worker that crash-looped on ECONNREFUSED: here it waits and connects."""

import asyncio
from pathlib import Path

from ackwire.bus.connect import Overflows, connect_nats
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


async def test_a_subscription_nats_dropped_messages_of_is_told(nats_server: EmbeddedNats) -> None:
    """A slow consumer loses messages silently in nats-py; its follower must hear of it
    (and read the store), or the last message lost would wait for the next one."""
    overflows = Overflows()
    nc = await connect_nats([nats_server.url], name="slow", overflows=overflows)
    told = asyncio.Event()
    stuck = asyncio.Event()

    async def never_done(_msg: object) -> None:
        await stuck.wait()  # the callback keeps the subscription's queue from draining

    sub = await nc.subscribe("busy", cb=never_done, pending_msgs_limit=1)
    overflows.watch(sub, told.set)
    for _ in range(5):
        await nc.publish("busy", b"x")
    await nc.flush()
    await asyncio.wait_for(told.wait(), 5)
    stuck.set()
    overflows.forget(sub)
    await nc.close()
