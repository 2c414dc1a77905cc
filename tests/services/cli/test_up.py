"""`ackwire up` as operations.md describes it: every line, in order, real pids, drain on SIGTERM."""

import asyncio
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from ackwire.bus.embedded import EmbeddedNats
from ackwire.wire.frames import Accepted, Ack, Deliver, Submit
from support.client import closed_with, receive, send, welcomed
from support.processes import AckwireProcess


def two_free_ports() -> int:
    """A port p such that p and p+1 are free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535:
            with socket.socket() as next_one:
                try:
                    next_one.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two consecutive free ports")


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    return state != "Z"


async def test_up_prints_every_line_in_order_and_drains_on_sigterm(
    tmp_path: Path, make_token: object
) -> None:
    port = two_free_ports()
    up = await AckwireProcess.start(
        "up", "--port", str(port), "--data-dir", str(tmp_path / "data"),
        env={"ACKWIRE_JWT_SECRET": "test-secret-for-ackwire-tests-only"},
    )  # fmt: skip
    try:
        lines = [await up.stdout_line(i, timeout=90) for i in range(7)]
        patterns = [
            r"ackwire nats nats://127\.0\.0\.1:\d+",
            rf"ackwire started gateway gw-1 pid=(\d+) ws://127\.0\.0\.1:{port}",
            rf"ackwire started gateway gw-2 pid=(\d+) ws://127\.0\.0\.1:{port + 1}",
            r"ackwire started scheduler scheduler-1 pid=(\d+)",
            r"ackwire started node node-1 pid=(\d+)",
            r"ackwire started node node-2 pid=(\d+)",
            rf"ackwire ready ws://127\.0\.0\.1:{port} ws://127\.0\.0\.1:{port + 1}",
        ]
        pids = []
        for line, pattern in zip(lines, patterns, strict=True):
            match = re.fullmatch(pattern, line)
            assert match, f"{line!r} does not match {pattern!r}"
            pids.extend(int(pid) for pid in match.groups())
        for pid, role in zip(
            pids, ["gw-1", "gw-2", "scheduler-1", "node-1", "node-2"], strict=True
        ):
            assert role in cmdline(pid)  # the pid is the service process itself

        clients = []
        for gateway_port, name in [(port, "gw-1"), (port + 1, "gw-2")]:
            ws, welcome = await welcomed(f"ws://127.0.0.1:{gateway_port}", make_token())  # type: ignore[operator]
            assert welcome.gateway == name
            clients.append(ws)

        # "ready" means a job submitted right now runs.
        await send(
            clients[0],
            Submit(
                ref="c-1",
                kind="translate",
                payload={"text": "谢谢", "source": "zh", "target": "en"},
            ),
        )
        accepted = await receive(clients[0])
        assert isinstance(accepted, Accepted), accepted
        result = await receive(clients[0], timeout=30)
        assert isinstance(result, Deliver), result
        assert (result.job_id, result.kind) == (accepted.job_id, "result")
        assert result.data == {"text": "thank you", "source": "zh", "target": "en"}
        await send(clients[0], Ack(seq=result.seq))

        assert await up.stop(signal.SIGTERM, timeout=60) == 0
        codes = await asyncio.gather(*(closed_with(ws) for ws in clients))
        assert [code for code, _ in codes] == [1001, 1001]
        assert "DrainTimeout" not in "".join(up.stderr_text)  # every service left NATS cleanly
        assert not [pid for pid in pids if alive(pid)]
    finally:
        if up.process.returncode is None:
            up.process.kill()
            await up.process.wait()


async def test_up_uses_a_given_nats_and_starts_none(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    port = two_free_ports()
    up = await AckwireProcess.start(
        "up", "--port", str(port), "--gateways", "1", "--nodes", "1",
        "--nats-url", nats_server.url, "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip
    try:
        assert await up.stdout_line(0) == f"ackwire nats {nats_server.url}"
        assert (await up.stdout_line(4, timeout=90)) == f"ackwire ready ws://127.0.0.1:{port}"
        assert not (tmp_path / "data" / "nats").exists()
        assert await up.stop(signal.SIGINT, timeout=60) == 0
    finally:
        if up.process.returncode is None:
            up.process.kill()
            await up.process.wait()


async def test_up_warns_about_the_development_secret(tmp_path: Path) -> None:
    port = two_free_ports()
    env = {k: v for k, v in os.environ.items() if k != "ACKWIRE_JWT_SECRET"}
    up = await AckwireProcess.start(
        "up", "--port", str(port), "--gateways", "1", "--nodes", "1",
        "--data-dir", str(tmp_path / "data"), env=env,
    )  # fmt: skip
    try:
        await up.stdout_line(4, timeout=90)
        assert any("development only" in line for line in up.stderr_text)
        assert await up.stop(timeout=60) == 0
    finally:
        if up.process.returncode is None:
            up.process.kill()
            await up.process.wait()


async def test_up_with_its_port_taken_says_so_and_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = await AckwireProcess.start(
            "up", "--port", str(port), "--gateways", "1", "--nodes", "1",
            "--data-dir", str(tmp_path / "data"),
        )  # fmt: skip
        assert await up.exit_code(timeout=90) == 1
    message = [line for line in up.stderr_text if line.startswith("ackwire: ")]
    assert message, up.stderr_text
    assert "gateway gw-1 exited" in message[-1]
    assert "address already in use" in "".join(up.stderr_text)
    assert not any("Traceback" in line for line in up.stderr_text)


@pytest.mark.parametrize(
    ("args", "reason"),
    [(["--gateways", "0"], "must be 1 or more"), (["--port", "eighty"], "invalid int")],
)
async def test_up_with_bad_arguments_exits_2(args: list[str], reason: str) -> None:
    up = await AckwireProcess.start("up", *args)
    assert await up.exit_code() == 2
    assert reason in "".join(up.stderr_text)
