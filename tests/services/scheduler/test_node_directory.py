"""The scheduler follows node registrations on the bus: joins, and leaves on drain or silence."""

import signal

import pytest

from ackwire.bus.embedded import EmbeddedNats, free_port
from ackwire.node.demo_kinds import DEMO_KINDS
from ackwire.node.service import Node
from ackwire.scheduler.service import Scheduler
from ackwire.settings import Settings
from support.logs import LogWatch
from support.processes import AckwireProcess


@pytest.fixture
async def scheduler(settings: Settings) -> Scheduler:
    scheduler = Scheduler(settings, name="scheduler-test", host="127.0.0.1")
    await scheduler.start()
    yield scheduler  # type: ignore[misc]
    await scheduler.drain()


async def test_a_node_joins_and_leaves_the_directory(
    scheduler: Scheduler, settings: Settings, logs: LogWatch
) -> None:
    node = Node(
        settings, name="node-a", kinds={"echo": DEMO_KINDS["echo"]}, capacity=2, host="127.0.0.1"
    )
    await node.start()
    await logs.wait_for("node.joined", node="node-a")
    assert scheduler.nodes["node-a"].kinds == ["echo"]
    assert scheduler.nodes["node-a"].capacity == 2
    await node.drain()
    await logs.wait_for("node.gone", node="node-a")
    assert "node-a" not in scheduler.nodes


async def test_a_node_that_started_earlier_is_known_at_once(
    settings: Settings, logs: LogWatch
) -> None:
    node = Node(
        settings, name="node-b", kinds={"sleep": DEMO_KINDS["sleep"]}, capacity=1, host="127.0.0.1"
    )
    await node.start()
    scheduler = Scheduler(settings, name="scheduler-late", host="127.0.0.1")
    await scheduler.start()
    try:
        await logs.wait_for("node.joined", node="node-b")
        assert set(scheduler.nodes) == {"node-b"}
    finally:
        await scheduler.drain()
        await node.drain()


async def test_a_node_killed_without_goodbye_expires_from_the_directory(
    nats_server: EmbeddedNats, settings: Settings, logs: LogWatch
) -> None:
    quick = settings.model_copy(update={"lease_heartbeat_s": 0.3})
    scheduler = Scheduler(quick, name="scheduler-test", host="127.0.0.1")
    await scheduler.start()
    node = await AckwireProcess.start(
        "node",
        "--name",
        "node-c",
        env={
            "ACKWIRE_NATS_URL": nats_server.url,
            "ACKWIRE_LEASE_HEARTBEAT_S": "0.3",
            "ACKWIRE_HTTP_PORT": str(free_port()),
        },
    )
    try:
        await logs.wait_for("node.joined", node="node-c", timeout=15)
        await node.stop(signal.SIGKILL)
        await logs.wait_for("node.gone", node="node-c", timeout=10)
        assert "node-c" not in scheduler.nodes
    finally:
        await scheduler.drain()
