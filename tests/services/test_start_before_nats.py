"""The seed's worker that crash-looped on ECONNREFUSED: every service started before NATS
waits with back-off, says so, and comes up once NATS does. Real processes, real NATS."""

from pathlib import Path

import nats
import pytest

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats, free_port
from support.processes import AckwireProcess


@pytest.mark.parametrize(
    ("service", "name", "url_suffix"),
    [
        ("node", "node-early", False),
        ("scheduler", "scheduler-early", False),
        ("gateway", "gw-early", True),
    ],
)
async def test_a_service_started_before_nats_waits_and_then_serves(
    tmp_path: Path, service: str, name: str, url_suffix: bool
) -> None:
    port = free_port()
    extra = ["--port", str(free_port())] if service == "gateway" else []
    process = await AckwireProcess.start(
        service,
        "--name",
        name,
        *extra,
        env={"ACKWIRE_NATS_URL": f"nats://127.0.0.1:{port}", "ACKWIRE_HTTP_PORT": str(free_port())},
    )
    try:
        first = await process.log_event("nats.unreachable", attempt=1)
        assert "waiting for NATS" in first["hint"]
        await process.log_event("nats.unreachable", attempt=2)  # retried, not crashed
        assert process.process.returncode is None
        assert process.stdout_lines == []  # not "started" while NATS is away

        async with EmbeddedNats(tmp_path, port=port) as server:
            line = await process.stdout_line(0)
            assert line.startswith(f"ackwire started {service} {name} pid={process.pid}")
            assert line.split()[-1].startswith("ws://") == url_suffix
            if service == "node":
                nc = await nats.connect(server.url)
                kv = await nc.jetstream().key_value(subjects.NODES_BUCKET)
                assert (await kv.get(name)).value
                assert await process.stop() == 0
                with pytest.raises(nats.js.errors.KeyNotFoundError):
                    await kv.get(name)  # deregistered on the way out
                await nc.close()
            else:
                assert await process.stop() == 0
    finally:
        if process.process.returncode is None:
            process.process.kill()
            await process.process.wait()


async def test_a_service_stopped_while_waiting_for_nats_exits_cleanly() -> None:
    process = await AckwireProcess.start(
        "node", "--name", "node-never", env={"ACKWIRE_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    )
    await process.log_event("nats.unreachable")
    assert await process.stop() == 0
    assert not any("Traceback" in line for line in process.stderr_text)
