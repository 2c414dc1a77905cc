"""A rolling update under steady traffic, as Kubernetes does it: one service at a time gets
SIGTERM while SDK clients receive messages and run jobs. Counted like a chaos run: every
message sent and every job accepted arrives, once each, and promptly."""

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from ackwire.client import Backoff, Client
from ackwire.publisher import Publisher
from services.cli.test_up import announced, start_stack, stop_cleanly, two_free_ports
from support.processes import AckwireProcess

MakeToken = Callable[..., str]
CLIENTS = 6
MESSAGES = 60
JOBS = 4
#: Well under the gateway's ack wait (30 s): owed messages move with their clients.
PROMPTLY_S = 15.0


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
    seconds: float,
) -> None:
    """Send each client's user `MESSAGES` messages at a steady pace while each runs `JOBS`
    `sleep` jobs of `seconds`, calling `midway` a third of the way in."""
    nc = await nats.connect(nats_url)
    publisher = Publisher(nc)

    async def jobs(client: Client, tally: Tally) -> None:
        for _ in range(JOBS):
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


def assert_all_once(tallies: list[Tally]) -> None:
    for tally in tallies:
        numbers = sorted(m["n"] for m in tally.messages)  # type: ignore[index]
        assert numbers == list(range(MESSAGES)), "lost or doubled messages"
        assert len(tally.results) == JOBS, "a job's result lost, or doubled"


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
    """SIGTERM `victim` under the traffic (half the clients start on each gateway); the
    gateway each client is on once everything arrived, and the slowest job's seconds.
    Every message must arrive within `PROMPTLY_S` of the traffic's end, and the stack must
    have logged `logged` (the victim's drain, by default). With `running_first`, the
    SIGTERM waits until the victim runs a job."""
    port = two_free_ports()
    up, mark = await start_stack(tmp_path, port, gateways=2, nodes=2, env=env)
    nats_url = up.stdout_lines[0].split()[-1]
    pids = await pids_of(up)
    urls = [f"ws://127.0.0.1:{port}", f"ws://127.0.0.1:{port + 1}"]
    clients = [
        Client(urls if i % 2 == 0 else urls[::-1], token=make_token(f"user-{i}"), backoff=backoff)
        for i in range(CLIENTS)
    ]
    tallies = [Tally() for _ in clients]

    async def sigterm() -> None:
        if running_first:
            await up.log_event("job.attempt_started", **{_field(victim): victim})
        os.kill(pids[victim], signal.SIGTERM)

    try:
        async with asyncio.timeout(120):
            for client in clients:
                await client.__aenter__()
                await client.wait_connected()
            readers = [
                asyncio.create_task(t.receive(c)) for c, t in zip(clients, tallies, strict=True)
            ]
            await steady_traffic(
                nats_url,
                clients,
                tallies,
                midway=sigterm,
                seconds=job_seconds,
            )
            async with asyncio.timeout(PROMPTLY_S):
                await asyncio.gather(*(t.complete.wait() for t in tallies))
            for reader in readers:
                reader.cancel()
        assert_all_once(tallies)
        # The service drained (it exited on its own, and `up` started it again).
        await up.log_event("service.stopping", signal="SIGTERM", **{_field(victim): victim})
        await up.log_event(logged, **{_field(victim): victim})
        return [c.gateway for c in clients], max(s for t in tallies for s in t.job_seconds)
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)
        await stop_cleanly(up, mark)


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


async def test_a_scheduler_sigterm_loses_no_timer_and_no_receipt(
    tmp_path: Path, make_token: MakeToken, quick_backoff: Backoff
) -> None:
    _, slowest = await run_rolling(tmp_path, make_token, quick_backoff, "scheduler-1")
    assert slowest < PROMPTLY_S
