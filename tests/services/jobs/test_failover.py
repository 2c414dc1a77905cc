"""Nodes die, start early, report late: the seeds' failures, against real node processes."""

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import nats
import pytest
import structlog
from nats.js import JetStreamContext

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats, free_port
from ackwire.bus.session_queue import SessionQueue
from ackwire.gateway.server import Gateway
from ackwire.jobs.ledger import Ignore, JobLedger, Succeeded
from ackwire.jobs.messages import JobSubmitted, StoredJob
from ackwire.jobs.records import JobRecords
from ackwire.node.demo_kinds import DEMO_KINDS
from ackwire.node.service import Node
from ackwire.node.worker import Worker
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
        "ACKWIRE_PENDING_TIMEOUT_S": str(settings.pending_timeout_s),
        "ACKWIRE_MAX_ATTEMPTS": str(settings.max_attempts),
        "ACKWIRE_LEASE_HEARTBEAT_S": "0.5",
        "ACKWIRE_HTTP_PORT": str(free_port()),
    }


async def start_node(
    name: str, nats_server: EmbeddedNats, settings: Settings, *flags: str
) -> AckwireProcess:
    """A node process serving `sleep` and `echo`, with more command-line `flags`."""
    node = await AckwireProcess.start(
        "node", "--name", name, "--kinds", "sleep,echo", *flags, env=node_env(nats_server, settings)
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
        victim = await first_to_log(nodes.values(), "job.attempt_started", job_id=accepted.job_id)
        await victim.stop(signal.SIGKILL)

        seen = await client.until_terminal(accepted.job_id, timeout=30)
        assert seen[-1].kind == "result"
        assert seen[-1].data == {"slept": 2.0}
        assert [d.kind for d in seen].count("result") == 1
        survivor = next(n for n in nodes.values() if n is not victim)
        finished = await survivor.log_event("job.state", job_id=accepted.job_id, state="done")
        assert finished["attempt"] == 2

        # The killed node's attempt "comes back" late: dropped, never delivered twice.
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        records = JobRecords(nc, SessionQueue(nc, js), JobLedger.from_settings(job_settings))
        log = structlog.get_logger("test").bind(job_id=accepted.job_id)
        work = JobSubmitted(
            job_id=accepted.job_id,
            session_id=subjects.new_session_id(),
            user="alice",
            kind="sleep",
            payload={"seconds": 2},
            trace_id="t",
        )
        late = await records.apply(StoredJob(work, seq=0), Succeeded(1, {"late": True}), log)
        await nc.close()
        assert late.outcome.actions == (Ignore("superseded attempt 1"),)
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


async def test_the_seed_bug_a_node_started_before_the_scheduler_serves_at_once(
    nats_server: EmbeddedNats,
    job_settings: Settings,
    gateway_only: Gateway,
    make_token: MakeToken,
    logs: LogWatch,
) -> None:
    """No scheduler is on a job's way: a node that starts first runs jobs, and a scheduler
    started later finds nothing left to do for them (their work is withdrawn)."""
    node = await start_node("node-early", nats_server, job_settings)
    try:
        await logs.wait_for("node.joined", service="gw-t", node="node-early")
        client = await connect(gateway_only.url, make_token())
        accepted = await client.submit(Submit(ref="c-1", kind="echo", payload={"early": True}))
        assert isinstance(accepted, Accepted)
        [result] = await client.until_terminal(accepted.job_id)
        assert result.data == {"early": True}
        scheduler = await start_scheduler("scheduler-late", nats_server, job_settings)
        await scheduler.log_event("scheduler.serving")
        later = await client.submit(Submit(ref="c-2", kind="echo", payload={"later": True}))
        assert isinstance(later, Accepted)
        assert (await client.until_terminal(later.job_id))[-1].data == {"later": True}
        assert not [e for e in scheduler.logs if e.get("job_id") == accepted.job_id]
        await scheduler.stop()
        await client.ws.close()
    finally:
        await node.stop()


async def test_a_scheduler_killed_is_replaced_and_one_replica_ends_a_job_its_node_lost(
    nats_server: EmbeddedNats,
    job_settings: Settings,
    gateway_only: Gateway,
    make_token: MakeToken,
    logs: LogWatch,
) -> None:
    """The killed scheduler's timers live in JetStream: of its two replacements, one fails
    the job whose node died too (no other node takes it), and only one tells the client."""
    node = await start_node("node-1", nats_server, job_settings)
    first = await start_scheduler("scheduler-1", nats_server, job_settings)
    replicas: list[AckwireProcess] = []
    try:
        await logs.wait_for("node.joined", service="gw-t", node="node-1")
        client = await connect(gateway_only.url, make_token())
        lost = await client.submit(Submit(ref="s", kind="sleep", payload={"seconds": 30}))
        assert isinstance(lost, Accepted)
        await node.log_event("job.attempt_started", job_id=lost.job_id)
        for i in range(3):  # jobs beside it run as ever
            quick = await client.submit(Submit(ref=f"q-{i}", kind="echo", payload={"i": i}))
            assert isinstance(quick, Accepted)
            [result] = await client.until_terminal(quick.job_id)
            assert result.kind == "result"
        await first.stop(signal.SIGKILL)
        await node.stop(signal.SIGKILL)
        replicas = [
            await start_scheduler(f"scheduler-{i}", nats_server, job_settings) for i in (2, 3)
        ]
        # Its node gone, and no other serving its kind for a job timeout and a pending
        # timeout more (the ledger's grace), it fails.
        within = 2 * (job_settings.job_timeout_s + job_settings.pending_timeout_s) + 10
        seen = await client.until_terminal(lost.job_id, timeout=within)
        [error] = [d for d in seen if d.kind != "progress"]
        assert error.kind == "error"
        assert error.data["code"] == "failed"  # type: ignore[index,call-overload]
        ended_by = [
            p
            for p in replicas
            for e in p.logs
            if e.get("event") == "job.state" and e.get("job_id") == lost.job_id
        ]
        assert len(ended_by) == 1, "both replicas ended the job"
        await send(client.ws, Ping())
        assert isinstance(await receive(client.ws), Pong)  # no second error came first
        await client.ws.close()
    finally:
        for process in (*replicas, first, node):
            if process.process.returncode is None:
                await process.stop()


async def first_to_log(
    processes: Iterable[AckwireProcess], name: str, **fields: Any
) -> AckwireProcess:
    """The process that logs `name` with `fields` first (waiting up to its bound)."""
    waits = {asyncio.ensure_future(p.log_event(name, **fields)): p for p in processes}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()
    first = done.pop()
    first.result()
    return waits[first]


class FirstRecordWrite:
    """Holds the first write of any job's record (the old design's KV key or the new
    record subject) until `release`; every other publish passes."""

    def __init__(self) -> None:
        self.held = asyncio.Event()
        self.released = asyncio.Event()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = JetStreamContext.publish

        async def publish(js: JetStreamContext, subject: str, *args: Any, **kwargs: Any) -> Any:
            is_record = ".record." in subject or subject.startswith("$KV.ackwire_jobs.")
            if is_record and not self.held.is_set():
                self.held.set()
                async with asyncio.timeout(30):
                    await self.released.wait()
            return await real(js, subject, *args, **kwargs)

        monkeypatch.setattr(JetStreamContext, "publish", publish)


async def test_a_start_refused_as_superseded_leaves_the_newer_attempts_work_alone(
    nats_server: EmbeddedNats,
    job_settings: Settings,
    logs: LogWatch,
    make_token: MakeToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 18, finding 6. Node A's start of delivery 1 is held up past the job timeout,
    so JetStream gives the work to node B (delivery 2), which starts it. A's start, once
    through, is refused as superseded: it must answer nothing for the work (a term sent
    on the older delivery ended the newer one's work too). Then B dies: the work comes
    back to A, and the job, with attempts left, completes."""
    settings = job_settings.model_copy(
        update={"pending_timeout_s": 10.0, "job_timeout_s": 3.0, "max_attempts": 3}
    )
    gate = FirstRecordWrite()
    gate.install(monkeypatch)
    # A asks before it runs, as for any job not young enough to run first: a young job's
    # first delivery runs while its start is asked for, and its work is kept alive.
    monkeypatch.setattr(Worker, "_runs_before_asking", lambda _worker, _attempt: False)
    gateway = Gateway(settings, name="gw-t", host="127.0.0.1", port=0)
    scheduler = Scheduler(settings, name="scheduler-t", host="127.0.0.1")
    node_a = Node(
        settings,
        name="node-a",
        kinds={"sleep": DEMO_KINDS["sleep"]},
        capacity=1,  # its one slot held by the held start: B gets the redelivery
        host="127.0.0.1",
    )
    for service, field in ((gateway, "gateway"), (scheduler, "scheduler"), (node_a, "node")):
        with structlog.contextvars.bound_contextvars(**{field: service.name}):
            await service.start()
    node_b: AckwireProcess | None = None
    try:
        await logs.wait_for("node.joined", gateway="gw-t", node="node-a")
        client = await connect(gateway.url, make_token())
        accepted = await client.submit(Submit(ref="c-1", kind="sleep", payload={"seconds": 1}))
        assert isinstance(accepted, Accepted)
        async with asyncio.timeout(10):
            await gate.held.wait()  # A holds delivery 1, its start not yet written
        env = {**node_env(nats_server, settings), "ACKWIRE_PENDING_TIMEOUT_S": "10"}
        node_b = await AckwireProcess.start("node", "--name", "node-b", "--kinds", "sleep", env=env)
        await node_b.stdout_line(0)
        await node_b.log_event("job.attempt_started", job_id=accepted.job_id)
        gate.released.set()
        await logs.wait_for("job.work_dropped", job_id=accepted.job_id, node="node-a")
        await node_b.stop(signal.SIGKILL)

        seen = await client.until_terminal(accepted.job_id, timeout=25)
        assert seen[-1].kind == "result", seen[-1].data
        assert seen[-1].data == {"slept": 1.0}
        await client.ws.close()
    finally:
        if node_b is not None and node_b.process.returncode is None:
            await node_b.stop()
        await gateway.drain()
        await scheduler.drain()
        await node_a.drain()
