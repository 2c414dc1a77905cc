"""The stack under test: NATS and ackwire's services as child processes, started the way
`ackwire up` starts them, with the parts a scenario needs and its logs in one file."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from ackwire.bus.embedded import EmbeddedNats
from ackwire.cli.main import DEMO_KIND_NAMES
from ackwire.cli.up import Child, ChildSpec


@dataclass(frozen=True, slots=True)
class StackShape:
    gateways: int
    scheduler: bool = False
    nodes: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    """`ACKWIRE_*` variables that differ from the defaults."""

    def describe(self) -> str:
        parts = [f"{self.gateways} gateway{'s' if self.gateways > 1 else ''}"]
        if self.scheduler:
            parts.append("a scheduler")
        if self.nodes:
            parts.append(f"{self.nodes} node{'s' if self.nodes > 1 else ''}")
        changed = [f"{name}={value}" for name, value in self.settings.items()]
        return ", ".join(parts) + (f" ({', '.join(changed)})" if changed else "")


class BenchStack:
    """`async with BenchStack(shape, workdir, nats_url) as stack:` everything is ready."""

    def __init__(self, shape: StackShape, workdir: Path, nats_url: str | None) -> None:
        self.shape = shape
        self.workdir = workdir
        self.secret = secrets.token_urlsafe(32)
        self.gateway_urls: list[str] = []
        self._given_nats_url = nats_url
        self._nats = None if nats_url else EmbeddedNats(workdir / "nats", own_session=True)
        self._children: list[Child] = []

    @property
    def nats_url(self) -> str:
        return self._given_nats_url or (self._nats.url if self._nats else "")

    @property
    def nats_pid(self) -> int | None:
        """The embedded nats-server's process; `None` when it is not the bench's own."""
        return self._nats.pid if self._nats else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "stack.log"

    async def __aenter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def kill_gateway(self, index: int) -> None:
        """SIGKILL, as a crashed machine would; it holds its sessions to the end."""
        await self._children[index].kill()

    async def _start(self) -> None:
        if self._nats is not None:
            await self._nats.start()
        env = dict(
            os.environ,
            ACKWIRE_NATS_URL=self.nats_url,
            ACKWIRE_JWT_SECRET=self.secret,
            ACKWIRE_LOG_FORMAT="json",
            **self.shape.settings,
        )
        specs = [
            ChildSpec("gateway", f"gw-{i}", ("--port", "0"), env)
            for i in range(1, self.shape.gateways + 1)
        ]
        if self.shape.scheduler:
            specs.append(ChildSpec("scheduler", "scheduler-1", (), env))
        specs.extend(
            ChildSpec("node", f"node-{i}", ("--kinds", DEMO_KIND_NAMES), env)
            for i in range(1, self.shape.nodes + 1)
        )
        with self.log_path.open("ab") as log:
            self._children = [Child(spec, log.fileno()) for spec in specs]
            started = await asyncio.gather(*(child.start() for child in self._children))
        self.gateway_urls = [line.split()[-1] for line in started[: self.shape.gateways]]

    async def _stop(self) -> None:
        await asyncio.gather(*(child.stop() for child in self._children))
        if self._nats is not None:
            await self._nats.stop()
            # What was stored is the bench's own traffic; the logs are what is worth keeping.
            shutil.rmtree(self.workdir / "nats" / "jetstream", ignore_errors=True)
