import os
import signal
from pathlib import Path

import nats
import pytest
import stamina
from nats.errors import NoRespondersError
from nats.js.api import StreamConfig
from nats.js.errors import NoStreamResponseError

from ackwire.bus.embedded import EmbeddedCluster, EmbeddedNats, NatsServerError, free_port


async def test_a_server_serves_jetstream_on_a_free_port_and_stops(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    await server.start()
    pid = server.pid
    nc = await nats.connect(server.url)
    info = await nc.jetstream().account_info()
    assert info.limits is not None
    await nc.close()
    await server.stop()
    assert server.pid is None
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_server_starts_on_a_chosen_port(tmp_path: Path) -> None:
    port = free_port()
    async with EmbeddedNats(tmp_path, port=port) as server:
        assert server.url == f"nats://127.0.0.1:{port}"


async def test_a_server_that_died_starts_again_on_its_port_with_its_store(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path)  # a free port the first time
    await server.start()
    url, pid = server.url, server.pid
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(StreamConfig(name="KEPT", subjects=["kept.>"]))
    await nc.jetstream().publish("kept.a", b"before")
    await nc.close()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert await server.exited() == -9
    try:
        await server.start()
        assert server.url == url
        assert server.pid != pid
        nc = await nats.connect(url)
        assert (await nc.jetstream().stream_info("KEPT")).state.messages == 1
        await nc.close()
    finally:
        await server.stop()
    with pytest.raises(NatsServerError, match="not running"):
        await server.exited()


async def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "a") as first:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(NatsServerError, match="did not start"):
            await EmbeddedNats(tmp_path / "b", port=port).start()


async def test_a_cluster_replicates_a_stream_over_three_servers(
    nats_cluster: EmbeddedCluster,
) -> None:
    nc = await nats.connect(nats_cluster.url.split(","))
    info = await nc.jetstream().add_stream(
        StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3)
    )
    await nc.close()
    assert info.cluster is not None
    assert len(info.cluster.replicas or []) == 2  # the leader plus two followers


async def test_a_cluster_keeps_serving_when_one_server_dies(
    nats_cluster: EmbeddedCluster,
) -> None:
    nc = await nats.connect(nats_cluster.url.split(","))
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3))
    await js.publish("r3.a", b"before")
    await nats_cluster.servers[0].kill()
    # While the stream elects a new leader, a publish may find no responder, or be stored
    # with its answer lost: retry it under one message id, so it is stored once.
    async for attempt in stamina.retry_context(
        on=(NoRespondersError, NoStreamResponseError, TimeoutError), attempts=None, timeout=20
    ):
        with attempt:
            ack = await js.publish("r3.a", b"after", timeout=2, headers={"Nats-Msg-Id": "after-1"})
    assert ack.seq == 2
    assert (await js.stream_info("R3")).state.messages == 2
    await nc.close()
