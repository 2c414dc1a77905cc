"""`ackwire top` in a real terminal (tmux): it shows the stack, live, and `q` quits."""

import asyncio
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from ackwire.bus.models import Delivery
from ackwire.bus.session_queue import SessionQueue
from ackwire.gateway.server import Gateway
from ackwire.settings import Settings
from support.client import welcomed

MakeToken = Callable[..., str]
_SCREEN_WITHIN_S = 20.0


def tmux(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", *args], check=False, capture_output=True, text=True, timeout=10)


async def screen_showing(session: str, *texts: str) -> str:
    """The terminal's screen once it shows every one of `texts` (bounded)."""
    async with asyncio.timeout(_SCREEN_WITHIN_S):
        while True:
            screen = tmux("capture-pane", "-p", "-t", session).stdout
            if all(text in screen for text in texts):
                return screen
            await asyncio.sleep(0.2)  # a terminal announces nothing: look again


async def test_top_shows_gateways_sessions_and_what_is_owed_and_q_quits(
    settings: Settings, gateway: Gateway, make_token: MakeToken, tmp_path: Path
) -> None:
    assert shutil.which("tmux"), "tmux is needed to drive `ackwire top` in a real terminal"
    ws, welcome = await welcomed(gateway.url, make_token("alice"))
    nc = await nats.connect(settings.nats_url)
    queue = SessionQueue(nc, nc.jetstream())
    for i in range(3):  # owed: the client never acks them
        await queue.put(
            Delivery(id=f"m-{i}", kind="message", session_id=welcome.session_id, data={"i": i})
        )
    await nc.close()

    session = f"top-{uuid.uuid4().hex[:8]}"
    ackwire = Path(sys.executable).parent / "ackwire"
    # tmux signals the channel once `top` has exited: what `q` must make happen.
    command = f"{ackwire} top --nats-url {settings.nats_url}; tmux wait-for -S {session}"
    started = tmux("new-session", "-d", "-s", session, "-x", "150", "-y", "40", command)
    assert started.returncode == 0, started.stderr
    try:
        screen = await screen_showing(session, "gw-test", welcome.session_id, "delivered")
        (tmp_path / "top.txt").write_text(screen)
        gateways = next(line for line in screen.splitlines() if "gw-test" in line)
        assert gateways.split()[1:2] == ["1"], gateways  # one session connected
        owed = next(line for line in screen.splitlines() if welcome.session_id in line)
        assert "alice" in owed
        assert owed.split()[-1] == "3"
        assert "3 messages owed" in screen

        tmux("send-keys", "-t", session, "q")
        exited = await asyncio.to_thread(tmux, "wait-for", session)  # bounded: 10 s
        assert exited.returncode == 0
    finally:
        tmux("kill-session", "-t", session)
        await ws.close()


async def test_top_against_no_nats_says_so_in_one_line() -> None:
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "ackwire"),
        "top",
        "--nats-url",
        "nats://127.0.0.1:1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(15):
        out, err = await process.communicate()
    assert process.returncode == 1
    [line] = err.decode().splitlines()
    assert line.startswith("ackwire top: NATS unreachable at nats://127.0.0.1:1")
    assert out == b""


pytestmark = pytest.mark.timeout(60)
