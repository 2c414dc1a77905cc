"""The public development secret: warned of on loopback, refused beyond it (real processes)."""

from pathlib import Path

import pytest

from ackwire.bus.embedded import EmbeddedNats, free_port
from ackwire.settings import DEVELOPMENT_SECRET
from support.processes import AckwireProcess

#: What running without ACKWIRE_JWT_SECRET amounts to, whatever the test's own environment.
DEVELOPMENT = {"ACKWIRE_JWT_SECRET": DEVELOPMENT_SECRET, "ACKWIRE_JWT_ALGORITHM": "HS256"}


@pytest.mark.parametrize(
    ("command", "host"),
    [("gateway", "0.0.0.0"), ("gateway", "::"), ("gateway", "192.0.2.7"), ("up", "0.0.0.0")],
)
async def test_the_development_secret_beyond_loopback_is_refused_in_one_line(
    tmp_path: Path, command: str, host: str
) -> None:
    data_dir = tmp_path / "data"
    extra = ["--data-dir", str(data_dir)] if command == "up" else []
    process = await AckwireProcess.start(
        command, "--host", host, "--port", str(free_port()), *extra, env=DEVELOPMENT
    )
    assert await process.exit_code(timeout=15) == 2
    lines = [line for line in process.stderr_text if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ackwire {command}: refusing to listen on {host}")
    assert "ACKWIRE_JWT_SECRET" in lines[0]
    assert process.stdout_lines == []  # `up` started nothing, not even NATS
    assert not data_dir.exists()


async def test_a_loopback_gateway_with_the_development_secret_starts_and_warns(
    nats_server: EmbeddedNats,
) -> None:
    process = await AckwireProcess.start(
        "gateway", "--host", "127.0.0.1", "--port", str(free_port()),
        env={**DEVELOPMENT, "ACKWIRE_NATS_URL": nats_server.url},
    )  # fmt: skip
    try:
        warning = await process.log_event("auth.development_secret")
        assert "ACKWIRE_JWT_SECRET" in warning["hint"]
        assert (await process.stdout_line(0)).startswith("ackwire started gateway gw-1")
        assert await process.stop() == 0
    finally:
        if process.process.returncode is None:
            process.process.kill()
            await process.process.wait()
