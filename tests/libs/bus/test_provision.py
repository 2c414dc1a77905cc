import nats

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedCluster, EmbeddedNats
from ackwire.bus.provision import buckets, provision
from ackwire.settings import Settings


async def test_provisioning_creates_every_bucket_and_is_idempotent(
    nats_server: EmbeddedNats,
) -> None:
    settings = Settings(nats_url=nats_server.url)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await provision(js, settings)
    first = {s.bucket: (await js.stream_info(f"KV_{s.bucket}")).config for s in buckets(settings)}
    await provision(js, settings)
    second = {s.bucket: (await js.stream_info(f"KV_{s.bucket}")).config for s in buckets(settings)}
    await nc.close()
    assert set(first) == {subjects.PRESENCE_BUCKET, subjects.NODES_BUCKET}
    assert first == second


async def test_provisioning_applies_a_changed_setting(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await provision(js, Settings(nats_url=nats_server.url, node_heartbeat_s=2))
    await provision(js, Settings(nats_url=nats_server.url, node_heartbeat_s=0.5))
    config = (await js.stream_info(f"KV_{subjects.NODES_BUCKET}")).config
    await nc.close()
    assert config.max_age == 1.5


async def test_provisioning_on_a_cluster_uses_the_configured_replicas(
    nats_cluster: EmbeddedCluster,
) -> None:
    nc = await nats.connect(nats_cluster.url.split(","))
    js = nc.jetstream()
    await provision(js, Settings(nats_url=nats_cluster.url, replicas=3))
    for spec in buckets(Settings()):
        assert (await js.stream_info(f"KV_{spec.bucket}")).config.num_replicas == 3
    await nc.close()
