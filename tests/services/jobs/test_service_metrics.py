"""Each service's own `/metrics`, each service a real process on a real NATS: under real
traffic (jobs, a message, acks) every counter, gauge and histogram moves by what happened,
on the service it belongs to, and nowhere else."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ackwire.bus.embedded import EmbeddedNats, free_port
from ackwire.publisher import Publisher
from ackwire.wire.codes import ErrorCode
from ackwire.wire.frames import Accepted, Ack, Error, Submit
from support.auth import TEST_SECRET
from support.client import next_deliver, receive, send
from support.processes import AckwireProcess

from .test_jobs import connect

MakeToken = Callable[..., str]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

WAIT_S = 10.0
MAX_ATTEMPTS = 2


async def scrape(port: int) -> Samples:
    """Every sample of a service's `/metrics` on 127.0.0.1:`port`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(5):
        response = await reader.read()
    writer.close()
    head, _, body = response.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@dataclass(eq=False)  # each one is itself: a key by identity
class Service:
    process: AckwireProcess
    port: int
    """Where its `/metrics` is (the gateway's WebSocket port; the others' HTTP port)."""

    async def scrape(self) -> Samples:
        return await scrape(self.port)


@dataclass
class Services:
    nats_url: str
    gateway: Service
    scheduler: Service
    node: Service


@contextlib.asynccontextmanager
async def running_services(nats_url: str, env: dict[str, str]) -> AsyncIterator[Services]:
    """A node (echo, fail, sleep), a scheduler and a gateway, each its own process, with
    `env`."""
    common = {
        "ACKWIRE_NATS_URL": nats_url,
        "ACKWIRE_JWT_SECRET": TEST_SECRET,
        "ACKWIRE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        **env,
    }
    node_port, scheduler_port, gateway_port = free_port(), free_port(), free_port()
    node = await AckwireProcess.start(
        "node",
        "--name",
        "node-m",
        "--kinds",
        "echo,fail,sleep",
        env={**common, "ACKWIRE_HTTP_PORT": str(node_port)},
    )
    scheduler = await AckwireProcess.start(
        "scheduler",
        "--name",
        "scheduler-m",
        # Its sweep sets the gauges of what is owed and of the sessions, and says so (debug).
        env={
            **common,
            "ACKWIRE_HTTP_PORT": str(scheduler_port),
            "ACKWIRE_EXPIRY_SWEEP_S": "0.2",
            "ACKWIRE_LOG_LEVEL": "debug",
        },
    )
    gateway = await AckwireProcess.start(
        "gateway", "--name", "gw-m", "--port", str(gateway_port), env=common
    )
    for process in (node, scheduler, gateway):
        await process.stdout_line(0)
    await gateway.log_event("node.joined", node="node-m", timeout=WAIT_S)
    yield Services(
        nats_url,
        Service(gateway, gateway_port),
        Service(scheduler, scheduler_port),
        Service(node, node_port),
    )
    for process in (gateway, scheduler, node):
        assert await process.stop() == 0


@pytest.fixture
async def services(nats_server: EmbeddedNats) -> AsyncIterator[Services]:
    async with running_services(nats_server.url, {}) as running:
        yield running


async def swept(scheduler: AckwireProcess, since: int, **fields: int) -> None:
    """Wait for a sweep logged from the `since`-th line on that saw `fields`."""
    await scheduler.log_event("expiry.swept", since=since, timeout=WAIT_S, **fields)


async def test_each_service_exports_its_own_metrics_and_they_move_with_the_traffic(
    services: Services, make_token: MakeToken
) -> None:
    gateway, scheduler, node = services.gateway, services.scheduler, services.node
    before = {service: await service.scrape() for service in (gateway, scheduler, node)}
    client = await connect(f"ws://127.0.0.1:{gateway.port}", make_token("alice"))
    connected = await gateway.scrape()
    assert value(connected, "ackwire_gateway_connections") == 1
    mark = len(scheduler.process.logs)
    await swept(scheduler.process, mark, live=1, detached=0)
    assert value(await scheduler.scrape(), "ackwire_sessions", state="live") == 1

    # Jobs: three that succeed and one whose every attempt fails, each result acked; and
    # two requests refused.
    refused = await client.submit(Submit(ref="t", kind="teleport", payload={}))
    assert isinstance(refused, Error)
    assert refused.code is ErrorCode.NO_SUCH_KIND
    await client.ws.send("{not json")
    bad = await receive(client.ws)
    assert isinstance(bad, Error)
    assert bad.code is ErrorCode.BAD_FRAME
    frames = [Submit(ref=f"e-{i}", kind="echo", payload={"i": i}) for i in range(3)]
    frames.append(Submit(ref="f", kind="fail", payload={"message": "no"}))
    for frame in frames:
        accepted = await client.submit(frame)
        assert isinstance(accepted, Accepted)
        await client.until_terminal(accepted.job_id)
        # Counted once the store confirmed the ack: then scraped.
        await gateway.process.log_event(
            "delivery.delivered", job_id=accepted.job_id, timeout=WAIT_S
        )

    # A message, owed until the client acks it.
    nc = await nats.connect(services.nats_url)
    try:
        mark = len(scheduler.process.logs)
        sent = await Publisher(nc).send({"text": "hi"}, user="alice")
        await swept(scheduler.process, mark, owed=1)
        owing = await scheduler.scrape()
        assert value(owing, "ackwire_messages_owed") == 1
        assert value(owing, "ackwire_oldest_owed_seconds") > 0
        deliver = await next_deliver(client.ws)
        assert deliver.id == sent.id
        await send(client.ws, Ack(seq=deliver.seq))
        await gateway.process.log_event("delivery.delivered", id=sent.id, timeout=WAIT_S)
        mark = len(scheduler.process.logs)
        await swept(scheduler.process, mark, owed=0)
        assert value(await scheduler.scrape(), "ackwire_messages_owed") == 0
    finally:
        await nc.close()

    # The client goes away without `bye`: its session waits for a resume.
    await client.ws.close()
    await gateway.process.log_event("session.connection_ended", timeout=WAIT_S)
    mark = len(scheduler.process.logs)
    await swept(scheduler.process, mark, live=0, detached=1)
    after = {service: await service.scrape() for service in (gateway, scheduler, node)}

    def moved(service: Service, name: str, **labels: str) -> float:
        return value(after[service], name, **labels) - value(before[service], name, **labels)

    assert value(after[gateway], "ackwire_gateway_connections") == 0
    acked = {"result": 3, "error": 1, "message": 1}
    for kind, count in acked.items():
        assert moved(gateway, "ackwire_gateway_deliveries_sent_total", kind=kind) == count
        assert moved(gateway, "ackwire_gateway_delivered_total", kind=kind) == count
        # Every ack timed: the histogram's count and its last bucket moved by the acks.
        assert moved(gateway, "ackwire_gateway_ack_latency_seconds_count", kind=kind) == count
        assert (
            moved(gateway, "ackwire_gateway_ack_latency_seconds_bucket", kind=kind, le="+Inf")
            == count
        )
        assert moved(gateway, "ackwire_gateway_ack_latency_seconds_sum", kind=kind) > 0
    assert moved(gateway, "ackwire_gateway_redeliveries_total") == 0
    assert moved(gateway, "ackwire_gateway_sessions_opened_total", outcome="new") == 1
    assert moved(gateway, "ackwire_gateway_refusals_total", code="no_such_kind") == 1
    assert moved(gateway, "ackwire_gateway_refusals_total", code="bad_frame") == 1

    # The node ran every attempt and recorded every end.
    assert moved(node, "ackwire_job_attempts_started_total") == 3 + MAX_ATTEMPTS
    assert moved(node, "ackwire_jobs_ended_total", state="done") == 3
    assert moved(node, "ackwire_jobs_ended_total", state="failed") == 1
    assert moved(node, "ackwire_job_duration_seconds_count", state="done") == 3
    assert moved(node, "ackwire_job_duration_seconds_bucket", state="done", le="+Inf") == 3

    # Jobs that went well cost the scheduler nothing: no timer was even checked.
    for outcome in ("rearmed", "stopped"):
        assert moved(scheduler, "ackwire_scheduler_job_timers_total", outcome=outcome) == 0
    assert moved(scheduler, "ackwire_jobs_ended_total", state="no_capacity") == 0
    assert value(after[scheduler], "ackwire_sessions", state="live") == 0
    assert value(after[scheduler], "ackwire_sessions", state="detached") == 1
    assert moved(scheduler, "ackwire_messages_expired_total", kind="message") == 0
    for service in (gateway, scheduler, node):
        assert moved(service, "ackwire_bus_errors_total", error="unavailable") == 0

    # Each service's series are its own: none shows another's (always zero there).
    gateway_names, scheduler_names, node_names = (
        names(after[service]) for service in (gateway, scheduler, node)
    )
    assert not any(n.startswith("ackwire_gateway_") for n in scheduler_names | node_names)
    assert not any(n.startswith("ackwire_scheduler_") for n in gateway_names | node_names)
    assert not any(n.startswith("ackwire_node_") for n in gateway_names | scheduler_names)
    owed_and_sessions = {"ackwire_messages_owed", "ackwire_sessions"}
    assert not owed_and_sessions & (gateway_names | node_names)
    assert "ackwire_jobs_ended_total" not in gateway_names
