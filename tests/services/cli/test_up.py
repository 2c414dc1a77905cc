"""`ackwire up` as operations.md describes it: every line, in order, real pids, drain on
SIGTERM, and children that die are restarted under their name and port."""

import asyncio
import os
import re
import signal
import socket
import uuid
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection

from ackwire.bus.embedded import EmbeddedNats
from ackwire.wire.frames import Accepted, Ack, Deliver, Ping, Pong, Submit
from support.auth import TEST_SECRET
from support.client import closed_with, next_deliver, receive, resumed, send, welcomed
from support.processes import AckwireProcess, two_free_ports

#: `ackwire started|restarted <service> <name> pid=<pid> [url]`
ANNOUNCED = re.compile(r"ackwire (started|restarted) (\w+) ([\w-]+) pid=(\d+)(?: (\S+))?")


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


def announced(line: str) -> tuple[str, str, str, int, str | None]:
    """(started|restarted, service, name, pid, url) of an announcement line."""
    match = ANNOUNCED.fullmatch(line)
    assert match, f"{line!r} is not an announcement"
    verb, service, name, pid, url = match.groups()
    return verb, service, name, int(pid), url


def marked_processes(mark: str) -> list[int]:
    """Every live process whose environment carries `ACKWIRE_TEST_STACK=<mark>`."""
    needle = f"ACKWIRE_TEST_STACK={mark}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if needle in environ.split(b"\0") and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


async def start_stack(
    tmp_path: Path,
    port: int,
    *,
    gateways: int = 2,
    nodes: int = 2,
    schedulers: int = 1,
    env: dict[str, str] | None = None,
) -> tuple[AckwireProcess, str]:
    """`ackwire up` with short job timeouts (and `env`), its children marked; (it, the mark)
    once ready."""
    mark = uuid.uuid4().hex
    up = await AckwireProcess.start(
        "up", "--port", str(port), "--gateways", str(gateways), "--nodes", str(nodes),
        "--schedulers", str(schedulers), "--data-dir", str(tmp_path / "data"),
        env={
            "ACKWIRE_JWT_SECRET": TEST_SECRET,
            "ACKWIRE_TEST_STACK": mark,
            # A job whose node was killed runs again after 3 s, not 300.
            "ACKWIRE_JOB_TIMEOUT_S": "3",
            **(env or {}),
        },
    )  # fmt: skip
    await up.stdout_line(1 + gateways + schedulers + nodes, timeout=90)  # `ready`
    return up, mark


async def deliveries_until_terminal(ws: ClientConnection, job_id: str) -> list[Deliver]:
    """Every deliver (acked) up to the first result or error of `job_id`."""
    received: list[Deliver] = []
    while not any(d.job_id == job_id and d.kind in {"result", "error"} for d in received):
        received.append(await next_deliver(ws, timeout=30))
        await send(ws, Ack(seq=received[-1].seq))
    return received


async def assert_an_echo_job_runs(ws: ClientConnection, payload: dict[str, str]) -> None:
    await send(ws, Submit(ref="c-echo", kind="echo", payload=payload))
    accepted = await receive(ws)
    assert isinstance(accepted, Accepted), accepted
    [result] = await deliveries_until_terminal(ws, accepted.job_id)
    assert result.data == payload


async def stop_cleanly(up: AckwireProcess, mark: str) -> None:
    assert await up.stop(signal.SIGTERM, timeout=60) == 0
    assert not marked_processes(mark)  # no child, old or restarted, outlives `up`


async def test_up_restarts_a_killed_gateway_and_node_and_their_client_loses_nothing(
    tmp_path: Path, make_token: object
) -> None:
    port = two_free_ports()
    up, mark = await start_stack(tmp_path, port)
    first = {
        name: (service, pid, url)
        for _, service, name, pid, url in map(announced, up.stdout_lines[1:6])
    }
    token = make_token()  # type: ignore[operator]
    ws, welcome = await welcomed(f"ws://127.0.0.1:{port}", token)
    assert welcome.gateway == "gw-1"
    await send(ws, Submit(ref="c-1", kind="sleep", payload={"seconds": 2}))
    accepted = await receive(ws)
    assert isinstance(accepted, Accepted), accepted
    running = await up.log_event("job.attempt_started", job_id=accepted.job_id)
    node = running["node"]

    # Kill the gateway holding the client and the node running its job.
    os.kill(first["gw-1"][1], signal.SIGKILL)
    os.kill(first[node][1], signal.SIGKILL)

    # Meanwhile the client resumes on the other gateway and its job ends, exactly once.
    await closed_with(ws)
    ws, again = await resumed(f"ws://127.0.0.1:{port + 1}", token, welcome)
    assert (again.resumed, again.gateway) == (True, "gw-2")
    received = await deliveries_until_terminal(ws, accepted.job_id)
    terminal = {d.id: d for d in received if d.kind in {"result", "error"}}
    assert [(d.kind, d.data) for d in terminal.values()] == [("result", {"slept": 2.0})]
    await send(ws, Ping())
    assert isinstance(await receive(ws), Pong)  # no second result came first

    lines = [await up.stdout_line(i, timeout=90) for i in (7, 8)]
    again_up = {
        name: (verb, service, pid, url) for verb, service, name, pid, url in map(announced, lines)
    }
    assert set(again_up) == {"gw-1", node}
    for name, (verb, service, pid, url) in again_up.items():
        assert (verb, service, url) == ("restarted", first[name][0], first[name][2])
        assert pid != first[name][1]
        assert name in cmdline(pid)
    assert again_up["gw-1"][3] == f"ws://127.0.0.1:{port}"  # the same port
    died = await up.log_event("up.child_died", child="gw-1")
    assert (died["service"], died["signal"]) == ("gateway", "SIGKILL")
    assert died["retry_in_s"] > 0

    # The restarted gateway serves, and a job runs again.
    fresh, hello = await welcomed(f"ws://127.0.0.1:{port}", make_token("bob"))  # type: ignore[operator]
    assert hello.gateway == "gw-1"
    await assert_an_echo_job_runs(fresh, {"after": "restart"})

    await stop_cleanly(up, mark)
    assert [code for code, _ in await asyncio.gather(closed_with(ws), closed_with(fresh))] == [
        1001,
        1001,
    ]


async def until_running_again(mark: str, name: str, old_pid: int) -> int:
    """The pid of the process started again as `name`, once it exists (no event says so)."""
    async with asyncio.timeout(30):
        while True:
            again = [p for p in marked_processes(mark) if p != old_pid and name in cmdline(p)]
            if again:
                return again[0]
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("when", ["in the back-off", "while it starts again"])
async def test_a_sigterm_during_a_restart_stops_at_once_and_leaves_no_process(
    tmp_path: Path, when: str
) -> None:
    port = two_free_ports()
    up, mark = await start_stack(tmp_path, port, gateways=1, nodes=1)
    node_pid = announced(up.stdout_lines[3])[3]
    os.kill(node_pid, signal.SIGKILL)
    died = await up.log_event("up.child_died", child="node-1")
    assert (died["service"], died["signal"]) == ("node", "SIGKILL")
    if when == "while it starts again":
        await until_running_again(mark, "node-1", node_pid)
    await stop_cleanly(up, mark)
    assert not [line for line in up.stdout_lines if line.startswith("ackwire restarted")]


async def test_up_restarts_its_nats_server_on_the_same_port_and_store(
    tmp_path: Path, make_token: object
) -> None:
    port = two_free_ports()
    up, mark = await start_stack(tmp_path, port, gateways=1, nodes=1)
    nats_url = up.stdout_lines[0].removeprefix("ackwire nats ")
    [ports_file] = (tmp_path / "data" / "nats" / "ports").glob("*.ports")
    nats_pid = int(ports_file.stem.rsplit("_", 1)[1])  # nats-server_<pid>.ports
    token = make_token()  # type: ignore[operator]
    ws, welcome = await welcomed(f"ws://127.0.0.1:{port}", token)

    os.kill(nats_pid, signal.SIGKILL)
    verb, service, name, pid, url = announced(await up.stdout_line(5, timeout=60))
    assert (verb, service, name, url) == ("restarted", "nats", "ackwire-embedded", nats_url)
    assert pid != nats_pid
    died = await up.log_event("up.child_died", child="ackwire-embedded")
    assert died["signal"] == "SIGKILL"
    for service_name in ({"gateway": "gw-1"}, {"scheduler": "scheduler-1"}, {"node": "node-1"}):
        await up.log_event("nats.reconnected", **service_name)

    # The store survived: the session opened before the crash resumes, and jobs run.
    await ws.close()
    ws, again = await resumed(f"ws://127.0.0.1:{port}", token, welcome)
    assert again.resumed
    await assert_an_echo_job_runs(ws, {"after": "nats restart"})
    await stop_cleanly(up, mark)
