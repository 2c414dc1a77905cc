"""A node stopping (SIGTERM, a rolling update) hands back what it could not finish in time."""

import time
from collections.abc import Callable

import structlog

from ackwire.gateway.server import Gateway
from ackwire.node.demo_kinds import DEMO_KINDS
from ackwire.node.service import Node
from ackwire.scheduler.service import Scheduler
from ackwire.settings import Settings
from ackwire.wire.frames import Accepted, Submit
from support.logs import LogWatch

from .test_jobs import connect

MakeToken = Callable[..., str]


async def test_a_draining_node_hands_its_running_job_to_another_at_once(
    job_settings: Settings, make_token: MakeToken, logs: LogWatch
) -> None:
    # A job timeout far longer than the test: only the hand-back can move the job in time.
    settings = job_settings.model_copy(update={"job_timeout_s": 120.0, "node_drain_s": 0.5})
    sleep = {"sleep": DEMO_KINDS["sleep"]}
    first = Node(settings, name="node-first", kinds=sleep, capacity=1, host="127.0.0.1")
    second = Node(settings, name="node-second", kinds=sleep, capacity=1, host="127.0.0.1")
    scheduler = Scheduler(settings, name="scheduler-t", host="127.0.0.1")
    gateway = Gateway(settings, name="gw-t", host="127.0.0.1", port=0)
    with structlog.contextvars.bound_contextvars(node=first.name):
        await first.start()
    for service, field in ((scheduler, "scheduler"), (gateway, "gateway")):
        with structlog.contextvars.bound_contextvars(**{field: service.name}):
            await service.start()
    try:
        await logs.wait_for("node.joined", gateway="gw-t", node="node-first")
        client = await connect(gateway.url, make_token())
        accepted = await client.submit(Submit(ref="c-1", kind="sleep", payload={"seconds": 3}))
        assert isinstance(accepted, Accepted)
        await logs.wait_for("job.attempt_started", job_id=accepted.job_id, node="node-first")
        with structlog.contextvars.bound_contextvars(node=second.name):
            await second.start()

        draining_since = time.monotonic()
        with structlog.contextvars.bound_contextvars(node=first.name):
            await first.drain()
        handed = await logs.wait_for("job.handed_back", job_id=accepted.job_id)
        assert handed["node"] == "node-first"

        seen = await client.until_terminal(accepted.job_id, timeout=30)
        took = time.monotonic() - draining_since
        assert [d.kind for d in seen if d.kind != "progress"] == ["result"]
        assert seen[-1].data == {"slept": 3.0}
        # The second node started at once: its 3 s, not the 120 s job timeout.
        assert took < 3 + 10, f"the job moved after {took:.1f} s"
        again = await logs.wait_for(
            "job.attempt_started", job_id=accepted.job_id, node="node-second"
        )
        assert again["attempt"] == 2
        # The handed-back attempt reported nothing: no failure, no result of its own.
        assert not logs.named("job.attempt_failed", job_id=accepted.job_id)
        await client.ws.close()
    finally:
        await gateway.drain()
        await scheduler.drain()
        await second.drain()
