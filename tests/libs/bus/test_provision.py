import nats

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedCluster, EmbeddedNats
from ackwire.bus.provision import buckets, provision, streams
from ackwire.settings import Settings


async def test_provisioning_creates_every_bucket_and_is_idempotent(
    nats_server: EmbeddedNats,
) -> None:
    settings = Settings(nats_url=nats_server.url)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    names = [f"KV_{b.bucket}" for b in buckets(settings)] + [c.name for c in streams(settings)]
    await provision(js, settings)
    first = {name: (await js.stream_info(name)).config for name in names}
    await provision(js, settings)
    second = {name: (await js.stream_info(name)).config for name in names}
    await nc.close()
    assert set(first) >= {
        f"KV_{subjects.SESSIONS_BUCKET}",
        f"KV_{subjects.GATEWAYS_BUCKET}",
        f"KV_{subjects.NODES_BUCKET}",
        subjects.SESSIONS_STREAM,
        subjects.JOBS_STREAM,
        subjects.RECEIPTS_STREAM,
        subjects.TOPICS_STREAM,
    }
    assert first == second


async def test_provisioning_applies_a_changed_setting(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await provision(js, Settings(nats_url=nats_server.url, lease_heartbeat_s=2))
    await provision(js, Settings(nats_url=nats_server.url, lease_heartbeat_s=0.5))
    config = (await js.stream_info(f"KV_{subjects.NODES_BUCKET}")).config
    await nc.close()
    assert config.max_age == 1.5


async def test_provisioning_on_a_cluster_uses_the_configured_replicas(
    nats_cluster: EmbeddedCluster,
) -> None:
    nc = await nats.connect(nats_cluster.url.split(","))
    js = nc.jetstream()
    await provision(js, Settings(nats_url=nats_cluster.url, replicas=3))
    names = [f"KV_{b.bucket}" for b in buckets(Settings())] + [c.name for c in streams(Settings())]
    for name in names:
        assert (await js.stream_info(name)).config.num_replicas == 3
    await nc.close()
