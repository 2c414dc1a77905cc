"""The web tests' stack: `ackwire up` as a newcomer runs it (the development secret on
loopback, two gateways), on the test's own nats-server, with short heartbeats."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ackwire.bus.embedded import EmbeddedNats
from ackwire.settings import DEVELOPMENT_SECRET
from support.processes import AckwireProcess, two_free_ports

_GATEWAY_LINE = re.compile(r"ackwire started gateway (gw-\d+) pid=(\d+) (ws://\S+)")


@dataclass
class UpStack:
    up: AckwireProcess
    nats_url: str
    gateways: dict[str, tuple[int, str]]  # name -> (pid, ws:// URL)

    def http(self, gateway: str = "gw-1") -> str:
        return self.gateways[gateway][1].replace("ws://", "http://")

    async def cli(self, *args: str) -> list[str]:
        """`ackwire <args>` against this stack's NATS; its stdout lines (it must exit 0)."""
        command = await AckwireProcess.start(*args, env={"ACKWIRE_NATS_URL": self.nats_url})
        assert await command.exit_code() == 0, "".join(command.stderr_text)
        return command.stdout_lines


@pytest.fixture
async def stack_up(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[UpStack]:
    up = await AckwireProcess.start(
        "up", "--port", str(two_free_ports()), "--nodes", "1", "--nats-url", nats_server.url,
        "--data-dir", str(tmp_path / "up"),
        env={
            "ACKWIRE_JWT_SECRET": DEVELOPMENT_SECRET,
            "ACKWIRE_HEARTBEAT_S": "2",
            "ACKWIRE_MAX_ATTEMPTS": "2",
            "ACKWIRE_LEASE_HEARTBEAT_S": "0.5",
        },
    )  # fmt: skip
    index = 0
    while not (await up.stdout_line(index, timeout=90)).startswith("ackwire ready"):
        index += 1
    gateways = {m[1]: (int(m[2]), m[3]) for m in map(_GATEWAY_LINE.fullmatch, up.stdout_lines) if m}
    yield UpStack(up, nats_server.url, gateways)
    assert await up.stop() == 0
