"""The SDK under `ackwire up`: the gateway holding a client is killed mid-job, and the
client resumes on the other one by itself; `run()` returns the result, once."""

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

from ackwire.client import Backoff, Client, Phase
from services.cli.test_up import announced, start_stack, stop_cleanly, two_free_ports
from support.logs import LogWatch


async def test_a_gateway_killed_mid_job_the_client_resumes_elsewhere_and_gets_the_result_once(
    tmp_path: Path, make_token: Callable[..., str], quick_backoff: Backoff, logs: LogWatch
) -> None:
    port = two_free_ports()
    up, mark = await start_stack(tmp_path, port, gateways=2, nodes=1)
    gw1_pid = next(
        pid for _, _, name, pid, _ in map(announced, up.stdout_lines[1:5]) if name == "gw-1"
    )
    urls = [f"ws://127.0.0.1:{port}", f"ws://127.0.0.1:{port + 1}"]
    async with (
        asyncio.timeout(60),
        Client(urls, token=make_token(), backoff=quick_backoff) as client,
    ):
        await client.wait_connected()
        assert client.gateway == "gw-1"
        session = client.session_id
        job = await client.submit("sleep", {"seconds": 2}, timeout=30)
        await up.log_event("job.attempt_started", job_id=job.job_id)

        os.kill(gw1_pid, signal.SIGKILL)

        assert await job.result() == {"slept": 2.0}
        assert (client.state, client.gateway, client.session_id) == (
            Phase.WELCOMED,
            "gw-2",
            session,
        )
        # Another job on the same session: nothing of the first comes again before it.
        assert await client.run("echo", {"after": "failover"}, timeout=15) == {"after": "failover"}
    states = [e["state"] for e in logs.named("client.state_changed")]  # the SDK's own lines
    assert states[0] == "welcomed"
    assert "backing_off" in states or "resuming" in states
    assert not logs.named("client.session_reset")
    assert not logs.named("client.delivery_unclaimed")  # no second result, for nobody
    await stop_cleanly(up, mark)
