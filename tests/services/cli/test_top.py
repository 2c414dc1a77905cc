"""`ackwire top` in a real terminal (tmux): it shows the stack, live, and `q` quits."""

import asyncio
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest

from ackwire.bus.models import Delivery
from ackwire.bus.session_queue import SessionQueue
from ackwire.cli.top import owed_rows, why_owed
from ackwire.gateway.server import Gateway
from ackwire.sessions.overview import SessionSummary, StackOverview
from ackwire.sessions.record import SessionState
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
        assert owed.split()[1:4] == ["alice", "gw-test", "3"], owed
        assert "s ago" in owed  # since when its oldest message is owed
        assert "awaiting ack" in owed  # and why: the client has not acked yet
        assert "3 messages owed" in screen

        tmux("send-keys", "-t", session, "o")  # the sessions owed the oldest messages
        screen = await screen_showing(session, "owed the oldest messages")
        assert any(welcome.session_id in line for line in screen.splitlines())

        tmux("send-keys", "-t", session, "q")
        exited = await asyncio.to_thread(tmux, "wait-for", session)  # bounded: 10 s
        assert exited.returncode == 0
    finally:
        tmux("kill-session", "-t", session)
        await ws.close()


def summary(state: SessionState, *, connected: bool) -> SessionSummary:
    return SessionSummary(
        session_id="s-1",
        user="alice",
        state=state,
        gateway="gw-1",
        connected=connected,
        since=datetime.now(UTC),
        owed=2,
    )


@pytest.mark.parametrize(
    ("session", "age_s", "why"),
    [
        (None, 5.0, "no session"),
        (summary(SessionState.DETACHED, connected=False), 5.0, "client away"),
        (summary(SessionState.LIVE, connected=False), 5.0, "gateway gone"),
        (summary(SessionState.ENDED, connected=False), 5.0, "session ended"),
        (summary(SessionState.LIVE, connected=True), 5.0, "awaiting ack"),
        (summary(SessionState.LIVE, connected=True), 31.0, "unacked, resent"),
    ],
)
def test_why_a_session_is_owed_follows_its_record(
    session: SessionSummary | None, age_s: float, why: str
) -> None:
    assert why_owed(session, age_s, ack_wait_s=30.0) == why


def test_owed_rows_say_since_when_and_show_a_session_with_no_record() -> None:
    now = datetime.now(UTC)
    overview = StackOverview(
        at=now,
        gateways=["gw-1"],
        sessions=[summary(SessionState.LIVE, connected=True)],
        stored_total=3,
        owed_total=3,
        oldest_owed_at=now - timedelta(seconds=40),
        jobs=[],
    )
    since = {"s-gone": now - timedelta(seconds=40), "s-1": now - timedelta(seconds=12)}
    rows = owed_rows(overview, since, ["s-gone", "s-1"], ack_wait_s=30.0)
    assert rows == [
        ("s-gone", "-", "-", "?", "40 s ago", "no session"),
        ("s-1", "alice", "gw-1", "2", "12 s ago", "awaiting ack"),
    ]


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
