"""Nodes die, start early, report late: the seeds' failures, against real node processes."""

import signal
from collections.abc import AsyncIterator, Callable

import nats
import pytest
import structlog

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats, free_port
from ackwire.gateway.server import Gateway
from ackwire.jobs.messages import AttemptSucceeded
from ackwire.scheduler.service import Scheduler
from ackwire.settings import Settings
from ackwire.wire.frames import Accepted, Ping, Pong, Submit
from support.client import receive, send
from support.logs import LogWatch
from support.processes import AckwireProcess

from .test_jobs import connect

MakeToken = Callable[..., str]


def node_env(nats_server: EmbeddedNats, settings: Settings) -> dict[str, str]:
    return {
        "ACKWIRE_NATS_URL": nats_server.url,
        "ACKWIRE_JOB_TIMEOUT_S": str(settings.job_timeout_s),
        "ACKWIRE_MAX_ATTEMPTS": str(settings.max_attempts),
        "ACKWIRE_LEASE_HEARTBEAT_S": "0.5",
        "ACKWIRE_HTTP_PORT": str(free_port()),
    }


async def start_node(name: str, nats_server: EmbeddedNats, settings: Settings) -> AckwireProcess:
    node = await AckwireProcess.start(
        "node", "--name", name, "--kinds", "sleep,echo", env=node_env(nats_server, settings)
    )
    await node.stdout_line(0)
    return node


@pytest.fixture
async def services(
    job_settings: Settings, logs: LogWatch
) -> AsyncIterator[tuple[Gateway, Scheduler]]:
    scheduler = Scheduler(job_settings, name="scheduler-t", host="127.0.0.1")
    gateway = Gateway(job_settings, name="gw-t", host="127.0.0.1", port=0)
    for service in (scheduler, gateway):
        with structlog.contextvars.bound_contextvars(service=service.name):
            await service.start()
    yield gateway, scheduler
    await gateway.drain()
    await scheduler.drain()


async def test_a_node_killed_mid_job_and_the_job_completes_on_another_exactly_once(
    nats_server: EmbeddedNats,
    job_settings: Settings,
    services: tuple[Gateway, Scheduler],
    make_token: MakeToken,
    logs: LogWatch,
) -> None:
    gateway, _ = services
    nodes = {
        name: await start_node(name, nats_server, job_settings) for name in ("node-a", "node-b")
    }
    try:
        await logs.wait_for("node.joined", service="gw-t", node="node-b")
        client = await connect(gateway.url, make_token())
        accepted = await client.submit(Submit(ref="c-1", kind="sleep", payload={"seconds": 2}))
        assert isinstance(accepted, Accepted)
        started = await logs.wait_for("job.state", job_id=accepted.job_id, state="running")
        victim = nodes[started["node"]]
        await victim.stop(signal.SIGKILL)

        seen = await client.until_terminal(accepted.job_id, timeout=30)
        assert seen[-1].kind == "result"
        assert seen[-1].data == {"slept": 2.0}
        assert [d.kind for d in seen].count("result") == 1
        survivor = next(n for n in nodes.values() if n is not victim)
        finished = await survivor.log_event("job.attempt_succeeded", job_id=accepted.job_id)
        assert finished["attempt"] == 2

        # The killed node's attempt "comes back" late: dropped, never delivered twice.
        nc = await nats.connect(nats_server.url)
        late = AttemptSucceeded(
            job_id=accepted.job_id, attempt=1, node="node-late", trace_id="t", data={"late": True}
        )
        await nc.jetstream().publish(subjects.job_event_subject(accepted.job_id), late.to_bytes())
        await nc.close()
        dropped = await logs.wait_for("job.input_ignored", job_id=accepted.job_id, attempt=1)
        assert dropped["reason"] in {"superseded attempt 1", "job already done"}
        await send(client.ws, Ping())
        assert isinstance(await receive(client.ws), Pong)  # no second result came first
        await client.ws.close()
    finally:
        for node in nodes.values():
            if node.process.returncode is None:
                await node.stop()


async def start_scheduler(
    name: str, nats_server: EmbeddedNats, settings: Settings
) -> AckwireProcess:
    scheduler = await AckwireProcess.start(
        "scheduler", "--name", name, env=node_env(nats_server, settings)
    )
    await scheduler.stdout_line(0)
    return scheduler


@pytest.fixture
async def gateway_only(job_settings: Settings, logs: LogWatch) -> AsyncIterator[Gateway]:
    gateway = Gateway(job_settings, name="gw-t", host="127.0.0.1", port=0)
    with structlog.contextvars.bound_contextvars(service="gw-t"):
        await gateway.start()
    yield gateway
    await gateway.drain()


async def test_the_seed_bug_a_node_started_before_the_scheduler_serves_once_it_is_up(
    nats_server: EmbeddedNats,
    job_settings: Settings,
    gateway_only: Gateway,
    make_token: MakeToken,
    logs: LogWatch,
) -> None:
    node = await start_node("node-early", nats_server, job_settings)  # no scheduler yet
    try:
        await logs.wait_for("node.joined", service="gw-t", node="node-early")
        client = await connect(gateway_only.url, make_token())
        accepted = await client.submit(Submit(ref="c-1", kind="echo", payload={"early": True}))
        assert isinstance(accepted, Accepted)  # stored, though no scheduler runs yet
        scheduler = await start_scheduler("scheduler-late", nats_server, job_settings)
        [result] = await client.until_terminal(accepted.job_id)
        assert result.data == {"early": True}
        await scheduler.stop()
        await client.ws.close()
    finally:
        await node.stop()


async def test_a_scheduler_killed_mid_job_is_replaced_and_two_replicas_run_each_job_once(
    nats_server: EmbeddedNats,
    job_settings: Settings,
    gateway_only: Gateway,
    make_token: MakeToken,
    logs: LogWatch,
) -> None:
    node = await start_node("node-1", nats_server, job_settings)
    first = await start_scheduler("scheduler-1", nats_server, job_settings)
    replicas: list[AckwireProcess] = []
    try:
        await logs.wait_for("node.joined", service="gw-t", node="node-1")
        client = await connect(gateway_only.url, make_token())
        slow = await client.submit(Submit(ref="s", kind="sleep", payload={"seconds": 1.5}))
        assert isinstance(slow, Accepted)
        await first.log_event("job.state", job_id=slow.job_id, state="running")
        await first.stop(signal.SIGKILL)  # its ledger lives on the bus, its timers in JetStream

        replicas = [
            await start_scheduler(f"scheduler-{i}", nats_server, job_settings) for i in (2, 3)
        ]
        quick = [
            await client.submit(Submit(ref=f"q-{i}", kind="echo", payload={"i": i}))
            for i in range(4)
        ]
        job_ids = [a.job_id for a in (slow, *quick) if isinstance(a, Accepted)]
        assert len(job_ids) == 5
        results = {job_id: await client.until_terminal(job_id, timeout=30) for job_id in job_ids}
        assert all([d.kind for d in seen].count("result") == 1 for seen in results.values())
        dispatched = [
            e["job_id"]
            for p in (first, *replicas)
            for e in p.logs
            if e.get("event") == "job.pending"
        ]
        assert sorted(dispatched) == sorted(job_ids)  # each job dispatched once, by one replica
        await client.ws.close()
    finally:
        for process in (*replicas, first, node):
            if process.process.returncode is None:
                await process.stop()
