"""`ackwire up`: the whole stack on one machine, as child processes.

Starts (or uses) NATS, then the gateways, one scheduler and the nodes, each
as `python -m ackwire.cli <service>`, so every `pid=` printed is the service
process itself. Each child prints its own `ackwire started …` line once it is
ready; this supervisor relays those lines in the contract's order, then
`ready`. On SIGINT/SIGTERM every child drains, NATS stops last, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ackwire.bus.embedded import EmbeddedNats, free_port
from ackwire.cli.main import DEMO_KIND_NAMES
from ackwire.lifecycle import stop_signal
from ackwire.settings import Settings

_START_TIMEOUT_S = 60.0
_DRAIN_TIMEOUT_S = 30.0

_log = structlog.get_logger("ackwire.up")


@dataclass(frozen=True, slots=True)
class StackOptions:
    host: str
    port: int
    gateways: int
    nodes: int
    nats_url: str | None
    data_dir: Path


@dataclass(frozen=True, slots=True)
class ChildSpec:
    service: str
    name: str
    args: tuple[str, ...]
    env: dict[str, str]


class ChildFailedError(Exception):
    """A child process ended before announcing itself, or never announced itself."""


class Child:
    def __init__(self, spec: ChildSpec, process: asyncio.subprocess.Process) -> None:
        self.spec = spec
        self.process = process

    async def started_line(self) -> str:
        """The child's `ackwire started …` line, once it is ready."""
        expected = f"ackwire started {self.spec.service} {self.spec.name} pid={self.process.pid}"
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                line = (await self.process.stdout.readline()).decode().rstrip("\n")
        except TimeoutError:
            raise ChildFailedError(
                f"{self._title} was not ready in {_START_TIMEOUT_S:.0f} s"
            ) from None
        if not line.startswith(expected):
            code = await self.process.wait()
            raise ChildFailedError(f"{self._title} exited with {code} before it was ready")
        return line

    async def relay_stdout(self) -> None:
        """Pass on anything more the child prints, so its pipe never fills."""
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            sys.stdout.write(line.decode())
            sys.stdout.flush()

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                await self.process.wait()
        except TimeoutError:
            _log.warning("up.child_killed", child=self.spec.name, hint="did not drain in time")
            self.process.kill()
            await self.process.wait()

    @property
    def _title(self) -> str:
        return f"{self.spec.service} {self.spec.name}"


def _warn_if_development_secret(settings: Settings) -> None:
    if settings.uses_development_secret:
        print(
            "ackwire: warning: ACKWIRE_JWT_SECRET is not set; the development secret is for "
            "development only (anyone can mint tokens with it)",
            file=sys.stderr,
            flush=True,
        )


def child_specs(options: StackOptions, nats_url: str) -> list[ChildSpec]:
    env = dict(os.environ, ACKWIRE_NATS_URL=nats_url)
    specs = [
        ChildSpec(
            "gateway",
            f"gw-{i}",
            ("--host", options.host, "--port", str(options.port + i - 1)),
            env,
        )
        for i in range(1, options.gateways + 1)
    ]
    specs.append(
        ChildSpec("scheduler", "scheduler-1", (), env | {"ACKWIRE_HTTP_PORT": str(free_port())})
    )
    specs.extend(
        ChildSpec(
            "node",
            f"node-{i}",
            ("--kinds", DEMO_KIND_NAMES),
            env | {"ACKWIRE_HTTP_PORT": str(free_port())},
        )
        for i in range(1, options.nodes + 1)
    )
    return specs


async def spawn(spec: ChildSpec, stderr: int | None = None) -> Child:
    """Start the child; its stderr (its logs) goes to `stderr`, a file descriptor, or ours."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ackwire.cli",
        spec.service,
        "--name",
        spec.name,
        *spec.args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env=spec.env,
    )
    return Child(spec, process)


async def run_stack(options: StackOptions, settings: Settings) -> int:
    stop = stop_signal()
    nats: EmbeddedNats | None = None
    if options.nats_url is None:
        nats = EmbeddedNats(options.data_dir / "nats", own_session=True)
        await nats.start()
    nats_url = options.nats_url or (nats.url if nats else "")
    print(f"ackwire nats {nats_url}", flush=True)
    _warn_if_development_secret(settings)

    children = [await spawn(spec) for spec in child_specs(options, nats_url)]
    try:
        return await _supervise(children, stop)
    finally:
        await asyncio.gather(*(child.stop() for child in children))
        if nats is not None:
            await nats.stop()


async def _supervise(children: list[Child], stop: asyncio.Future[signal.Signals]) -> int:
    announcing = asyncio.ensure_future(_announce(children))
    either: list[asyncio.Future[Any]] = [announcing, stop]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not announcing.done():
        announcing.cancel()
        return 0
    try:
        announcing.result()
    except ChildFailedError as exc:
        print(f"ackwire: {exc}", file=sys.stderr, flush=True)
        return 1

    relays = [asyncio.ensure_future(child.relay_stdout()) for child in children]
    exits = [asyncio.ensure_future(child.process.wait()) for child in children]
    any_of: list[asyncio.Future[Any]] = [stop, *exits]
    await asyncio.wait(any_of, return_when=asyncio.FIRST_COMPLETED)
    for relay in relays:
        relay.cancel()
    if stop.done():
        _log.info("up.stopping", signal=stop.result().name)
        return 0
    for child, ended in zip(children, exits, strict=True):
        if ended.done():
            print(
                f"ackwire: {child.spec.service} {child.spec.name} exited with {ended.result()}; "
                "stopping the stack",
                file=sys.stderr,
                flush=True,
            )
    return 1


async def _announce(children: list[Child]) -> None:
    """Relay each child's started line in the contract's order, then `ready`."""
    lines = await asyncio.gather(*(child.started_line() for child in children))
    for line in lines:
        print(line, flush=True)
    urls = [
        line.rsplit(" ", 1)[1]
        for child, line in zip(children, lines, strict=True)
        if child.spec.service == "gateway"
    ]
    print("ackwire ready " + " ".join(urls), flush=True)
