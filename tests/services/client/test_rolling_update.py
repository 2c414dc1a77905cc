"""A rolling update under steady traffic, as Kubernetes does it: one service at a time gets
SIGTERM while SDK clients receive messages and run jobs. Counted like a chaos run: every
message sent and every job accepted arrives, once each, and promptly."""

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from ackwire.client import Backoff, Client, Job, JobFailedError
from ackwire.publisher import Publisher
from services.cli.test_up import announced, start_stack, stop_cleanly, two_free_ports
from support.processes import AckwireProcess

MakeToken = Callable[..., str]
CLIENTS = 12
MESSAGES = 60
JOBS = 4
#: Well under the gateway's ack wait (30 s): owed messages move with their clients.
PROMPTLY_S = 15.0
#: The job slots of `up`'s two nodes (4 each).
SLOTS = 8
#: Jobs stored while every slot is taken: they wait for their pending timeout.
WAITING = 4


class Tally:
    """What one client was handed: message numbers, and its jobs' results."""

    def __init__(self) -> None:
        self.messages: list[object] = []
        self.results: list[object] = []
        self.job_seconds: list[float] = []
        self.complete = asyncio.Event()

    async def receive(self, client: Client) -> None:
        # Only noted here: a reader task that raised would be heard of as a timeout.
        async for message in client.messages():
            self.messages.append(message.data)
            if len(self.messages) == MESSAGES:
                self.complete.set()


async def pids_of(up: AckwireProcess) -> dict[str, int]:
    return {name: pid for _, _, name, pid, _ in map(announced, up.stdout_lines[1:-1])}


async def steady_traffic(
    nats_url: str,
    clients: list[Client],
    tallies: list[Tally],
    *,
    midway: Callable[[], Awaitable[None]],
    jobs_each: int,
    seconds: float,
) -> None:
    """Send each client's user `MESSAGES` messages at a steady pace while each runs
    `jobs_each` `sleep` jobs of `seconds`, calling `midway` a third of the way in."""
    nc = await nats.connect(nats_url)
    publisher = Publisher(nc)

    async def jobs(client: Client, tally: Tally) -> None:
        for _ in range(jobs_each):
            began = time.monotonic()
            result = await client.run("sleep", {"seconds": seconds}, timeout=30)
            tally.job_seconds.append(time.monotonic() - began)
            tally.results.append(result)

    async def messages() -> None:
        for n in range(MESSAGES):
            if n == MESSAGES // 3:
                await midway()
            await asyncio.gather(
                *(publisher.send({"n": n}, user=f"user-{i}") for i in range(len(clients)))
            )
            await asyncio.sleep(0.02)  # the pace of the load, not a wait for anything

    try:
        await asyncio.gather(
            messages(), *(jobs(c, t) for c, t in zip(clients, tallies, strict=True))
        )
    finally:
        await nc.close()


def assert_all_once(tallies: list[Tally], jobs_each: int = JOBS) -> None:
    for tally in tallies:
        numbers = sorted(m["n"] for m in tally.messages)  # type: ignore[index]
        assert numbers == list(range(MESSAGES)), "lost or doubled messages"
        assert len(tally.results) == jobs_each, "a job's result lost, or doubled"


@dataclass
class RollingStack:
    """`ackwire up` with two gateways and two nodes, and `CLIENTS` SDK clients on it (half
    of them start on each gateway)."""

    up: AckwireProcess
    nats_url: str
    urls: list[str]
    pids: dict[str, int]
    clients: list[Client]
    tallies: list[Tally]

    async def traffic(
        self, midway: Callable[[], Awaitable[None]], *, jobs_each: int = JOBS, seconds: float = 0
    ) -> None:
        """The steady traffic, then every message must arrive within `PROMPTLY_S`."""
        readers = [
            asyncio.create_task(t.receive(c))
            for c, t in zip(self.clients, self.tallies, strict=True)
        ]
        await steady_traffic(
            self.nats_url,
            self.clients,
            self.tallies,
            midway=midway,
            jobs_each=jobs_each,
            seconds=seconds,
        )
        async with asyncio.timeout(PROMPTLY_S):
            await asyncio.gather(*(t.complete.wait() for t in self.tallies))
        for reader in readers:
            reader.cancel()


@contextlib.asynccontextmanager
async def rolling_stack(
    tmp_path: Path,
    make_token: MakeToken,
    backoff: Backoff,
    *,
    schedulers: int = 1,
    env: dict[str, str] | None = None,
) -> AsyncIterator[RollingStack]:
    port = two_free_ports()
    up, mark = await start_stack(
        tmp_path, port, gateways=2, nodes=2, schedulers=schedulers, env=env
    )
    urls = [f"ws://127.0.0.1:{port}", f"ws://127.0.0.1:{port + 1}"]
    clients = [
        Client(urls if i % 2 == 0 else urls[::-1], token=make_token(f"user-{i}"), backoff=backoff)
        for i in range(CLIENTS)
    ]
    try:
        async with asyncio.timeout(120):
            for client in clients:
                await client.__aenter__()
                await client.wait_connected()
            yield RollingStack(
                up,
                up.stdout_lines[0].split()[-1],
                urls,
                await pids_of(up),
                clients,
                [Tally() for _ in clients],
            )
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)
        await stop_cleanly(up, mark)


async def run_rolling(
    tmp_path: Path,
    make_token: MakeToken,
    backoff: Backoff,
    victim: str,
    *,
    job_seconds: float = 0.0,
    env: dict[str, str] | None = None,
    logged: str = "service.stopping",
    running_first: bool = False,
) -> tuple[list[str | None], float]:
    """SIGTERM `victim` under the traffic; the gateway each client is on once everything
    arrived, and the slowest job's seconds. The stack must have logged `logged` (the
    victim's drain, by default). With `running_first`, the SIGTERM waits until the victim
    runs a job."""
    async with rolling_stack(tmp_path, make_token, backoff, env=env) as stack:

        async def sigterm() -> None:
            if running_first:
                await stack.up.log_event("job.attempt_started", **{_field(victim): victim})
            os.kill(stack.pids[victim], signal.SIGTERM)

        await stack.traffic(sigterm, seconds=job_seconds)
        assert_all_once(stack.tallies)
        # The service drained (it exited on its own, and `up` started it again).
        await stack.up.log_event("service.stopping", signal="SIGTERM", **{_field(victim): victim})
        await stack.up.log_event(logged, **{_field(victim): victim})
        return [c.gateway for c in stack.clients], max(
            s for t in stack.tallies for s in t.job_seconds
        )


def _field(name: str) -> str:
    return "gateway" if name.startswith("gw-") else name.split("-", maxsplit=1)[0]


async def test_a_gateway_sigterm_moves_its_clients_and_nothing_is_lost_or_doubled(
    tmp_path: Path, make_token: MakeToken, quick_backoff: Backoff
) -> None:
    gateways, slowest = await run_rolling(tmp_path, make_token, quick_backoff, "gw-1")
    # gw-1's clients (every other one started there) resumed on gw-2 by themselves: a
    # 1001 sends them at once to the next gateway they know.
    assert gateways[::2] == ["gw-2"] * (CLIENTS // 2)
    assert slowest < PROMPTLY_S


async def test_a_node_sigterm_hands_its_work_on_and_no_job_is_lost_or_doubled(
    tmp_path: Path, make_token: MakeToken, quick_backoff: Backoff
) -> None:
    """Jobs of 2 s run on node-1 when it gets SIGTERM; it lets them run 0.5 s, then hands
    them back, and node-2 (or node-1 again, restarted) runs them at once: within the
    test's bound, where waiting for the job timeout would not be."""
    env = {"ACKWIRE_NODE_DRAIN_S": "0.5", "ACKWIRE_JOB_TIMEOUT_S": "60"}
    _, slowest = await run_rolling(
        tmp_path,
        make_token,
        quick_backoff,
        "node-1",
        job_seconds=2.0,
        env=env,
        logged="job.handed_back",
        running_first=True,
    )
    assert slowest < 2.0 + PROMPTLY_S  # not the 60 s job timeout


async def test_a_scheduler_sigterm_leaves_every_timer_due_to_fire_on_time(
    tmp_path: Path, make_token: MakeToken, quick_backoff: Backoff
) -> None:
    """Two schedulers; scheduler-1 gets SIGTERM just after `WAITING` jobs were stored that
    no node can take (every slot runs a 6 s job) and before their 2 s pending timeout.
    Those timers still fire (the jobs end `no_capacity`), promptly, each job is ended
    once. Every replica sweeps every job, so which one ends it (scheduler-2, or
    scheduler-1 restarted by `up`) is a race the record's compare-and-set settles.
    Messages flow as before."""
    pending_s = 2.0
    env = {"ACKWIRE_PENDING_TIMEOUT_S": str(pending_s), "ACKWIRE_JOB_TIMEOUT_S": "60"}
    async with (
        rolling_stack(tmp_path, make_token, quick_backoff, schedulers=2, env=env) as stack,
        Client(stack.urls, token=make_token("crowd"), backoff=quick_backoff) as crowd,
    ):
        await crowd.wait_connected()
        running = [await crowd.submit("sleep", {"seconds": 6}, timeout=60) for _ in range(SLOTS)]
        for job in running:
            await stack.up.log_event("job.attempt_started", job_id=await job.accepted())
        waiting: list[Job] = []

        async def crowd_out_then_sigterm() -> None:
            waiting.extend([await crowd.submit("echo", {}, timeout=60) for _ in range(WAITING)])
            os.kill(stack.pids["scheduler-1"], signal.SIGTERM)

        began = time.monotonic()
        await stack.traffic(crowd_out_then_sigterm, jobs_each=0)
        assert_all_once(stack.tallies, jobs_each=0)
        async with asyncio.timeout(PROMPTLY_S):
            for job in waiting:
                with pytest.raises(JobFailedError) as failed:
                    await job.result()
                assert failed.value.code == "no_capacity"
            # No later than a timer held by the stopping scheduler comes back (its 5 s ack
            # wait), well before any retry or the 60 s job timeout.
            assert time.monotonic() - began < pending_s + 5 + 3
            assert [await job.result() for job in running] == [{"slept": 6}] * SLOTS
        await stack.up.log_event("scheduler.stopped", scheduler="scheduler-1")
        for job in waiting:
            ends = [
                e
                for e in stack.up.logs
                if e.get("event") == "job.state" and e.get("job_id") == job.job_id
            ]
            assert [e["state"] for e in ends] == ["no_capacity"], f"{job.job_id} ended {ends}"
