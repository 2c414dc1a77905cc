"""A whole stack in one test process: a real NATS, a gateway, a scheduler and a node."""

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import structlog
from pydantic import BaseModel

from ackwire.gateway.server import Gateway
from ackwire.node.demo_kinds import DEMO_KINDS
from ackwire.node.service import Node
from ackwire.nodekit import JobKind
from ackwire.scheduler.service import Scheduler
from ackwire.settings import Settings
from support.logs import LogWatch


@dataclass
class Stack:
    gateway: Gateway
    scheduler: Scheduler
    node: Node
    settings: Settings


StartStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
def job_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "pending_timeout_s": 2.0,
            "job_timeout_s": 3.0,
            "max_attempts": 2,
            "ack_wait_s": 5.0,
            "lease_heartbeat_s": 0.5,
            "submit_rate_per_s": 1.0,
            "submit_burst": 5,
        }
    )


@pytest.fixture
async def start_stack(job_settings: Settings, logs: LogWatch) -> AsyncIterator[StartStack]:
    """Starts a stack whose node serves `kinds` with `capacity` slots, with `changes` to
    the settings; drained after the test."""
    started: list[Stack] = []

    async def start(
        kinds: dict[str, JobKind[BaseModel, BaseModel]] = DEMO_KINDS,
        capacity: int = 2,
        **changes: object,
    ) -> Stack:
        settings = job_settings.model_copy(update=changes)
        node = Node(settings, name="node-t", kinds=kinds, capacity=capacity, host="127.0.0.1")
        scheduler = Scheduler(settings, name="scheduler-t", host="127.0.0.1")
        gateway = Gateway(settings, name="gw-t", host="127.0.0.1", port=0)
        started.append(Stack(gateway, scheduler, node, settings))
        for service, field in ((node, "node"), (scheduler, "scheduler"), (gateway, "gateway")):
            with structlog.contextvars.bound_contextvars(**{field: service.name}):
                await service.start()
        await logs.wait_for("node.joined", gateway="gw-t", node="node-t")
        return started[-1]

    yield start
    for stack in started:
        await stack.gateway.drain()
        await stack.scheduler.drain()
        await stack.node.drain()


@pytest.fixture
async def stack(start_stack: StartStack) -> Stack:
    return await start_stack()
