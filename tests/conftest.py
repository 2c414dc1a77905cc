"""Fixtures shared by every test: real nats-servers, gateways, tokens and clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import structlog

from ackwire.bus.embedded import EmbeddedCluster, EmbeddedNats
from ackwire.gateway.server import Gateway
from ackwire.settings import Settings
from ackwire.tokens import mint_token
from support.auth import TEST_SECRET
from support.logs import LogWatch
from support.processes import AckwireProcess


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[EmbeddedCluster]:
    async with EmbeddedCluster(tmp_path / "cluster") as cluster:
        yield cluster


@pytest.fixture
def settings(nats_server: EmbeddedNats) -> Settings:
    return Settings(
        nats_url=nats_server.url,
        jwt_secret=TEST_SECRET,
        hello_timeout_s=2.0,
        heartbeat_s=5.0,
        max_frame_bytes=4096,
        gateway_port=0,
        http_port=0,
    )


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async with Gateway(settings, name="gw-test", host="127.0.0.1", port=0) as gw:
        yield gw


@pytest.fixture
def make_token() -> Callable[..., str]:
    def make(sub: str = "alice", **kwargs: object) -> str:
        return mint_token(TEST_SECRET, sub, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(autouse=True)
async def no_process_left_behind() -> AsyncIterator[None]:
    """A test that fails halfway must not leave its service processes running (nor their
    pipes to be collected after its event loop closed)."""
    yield
    await AckwireProcess.kill_leftovers()


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    """Every structured log line of the test, awaitable by event name."""
    watch = LogWatch()
    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, watch],
        cache_logger_on_first_use=False,
    )
    try:
        yield watch
    finally:
        structlog.configure(**previous)
