"""`ackwire up`: the whole stack on one machine, as child processes, supervised.

Starts (or uses) NATS, then the gateways, the scheduler (one unless asked for more:
a replica to hand over to in a rolling update) and the nodes, each
as `python -m ackwire.cli <service>`, so every `pid=` printed is the service
process itself. Each child prints its own `ackwire started …` line once it is
ready; this supervisor relays those lines in the contract's order, then
`ready`. From then on a child that dies is started again under the same name
and arguments (a gateway on its port), after a back-off (`restarts.py`), and
`ackwire restarted …` is printed once it is ready again; so is the embedded
nats-server, on its port and store. On SIGINT/SIGTERM every child drains, NATS
stops last, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from ackwire.bus.embedded import EmbeddedNats, NatsServerError, free_port
from ackwire.cli.main import DEMO_KIND_NAMES
from ackwire.cli.restarts import RestartBackoff
from ackwire.lifecycle import cancel_and_wait, stop_signal
from ackwire.settings import Settings

_START_TIMEOUT_S = 60.0
_DRAIN_TIMEOUT_S = 30.0

_log = structlog.get_logger("ackwire.up")


@dataclass(frozen=True, slots=True)
class StackOptions:
    host: str
    port: int
    gateways: int
    schedulers: int
    nodes: int
    nats_url: str | None
    data_dir: Path


@dataclass(frozen=True, slots=True)
class ChildSpec:
    service: str
    name: str
    args: tuple[str, ...]
    env: dict[str, str]

    def launch_env(self) -> dict[str, str]:
        """The environment of one start. The scheduler and nodes serve their probes on
        `ACKWIRE_HTTP_PORT`: each start gets a port free now (a restart's old one may
        have been taken meanwhile). A gateway's probes share its fixed port."""
        if self.service == "gateway":
            return self.env
        return self.env | {"ACKWIRE_HTTP_PORT": str(free_port())}


class ChildFailedError(Exception):
    """A child did not start: it ended before it was ready, or was not ready in time."""


class Supervised(Protocol):
    """What `up` starts, watches, and starts again when it dies."""

    @property
    def service(self) -> str: ...

    @property
    def name(self) -> str: ...

    async def start(self) -> str:
        """Start it; once it is ready, its `<service> <name> pid=<pid> [url]`."""

    async def run_out(self) -> int:
        """Wait until it ends, for whatever reason; its exit status."""

    async def stop(self) -> None: ...


class Child:
    """One service of the stack as a child process; started again after it died, it is
    the same service under the same name and arguments."""

    def __init__(self, spec: ChildSpec, stderr: int | None = None) -> None:
        self.spec = spec
        self._stderr = stderr  # its logs: this file descriptor, or ours
        self._process: asyncio.subprocess.Process | None = None

    @property
    def service(self) -> str:
        return self.spec.service

    @property
    def name(self) -> str:
        return self.spec.name

    async def start(self) -> str:
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ackwire.cli",
                self.spec.service,
                "--name",
                self.spec.name,
                *self.spec.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=self._stderr,
                env=self.spec.launch_env(),
            )
        except OSError as exc:
            raise ChildFailedError(f"{self._title} could not start: {exc}") from None
        return await self._announcement(self._process)

    async def _announcement(self, process: asyncio.subprocess.Process) -> str:
        """The fields of the child's `ackwire started …` line, once it is ready."""
        prefix = "ackwire started "
        expected = f"{prefix}{self.spec.service} {self.spec.name} pid={process.pid}"
        assert process.stdout is not None
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                line = (await process.stdout.readline()).decode().rstrip("\n")
                if line.startswith(expected):
                    return line.removeprefix(prefix)
                code = await process.wait()
        except TimeoutError:
            await self.kill()  # a restart must not find it still holding its port
            raise ChildFailedError(
                f"{self._title} was not ready in {_START_TIMEOUT_S:.0f} s"
            ) from None
        raise ChildFailedError(f"{self._title} exited with {code} before it was ready")

    async def run_out(self) -> int:
        """Pass on anything more the child prints, so its pipe never fills, until it ends."""
        assert self._process is not None
        assert self._process.stdout is not None
        async for line in self._process.stdout:
            sys.stdout.write(line.decode())
            sys.stdout.flush()
        return await self._process.wait()

    async def stop(self) -> None:
        """SIGTERM (it drains), or SIGKILL if it does not end in time."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            _log.warning("up.child_killed", child=self.spec.name, hint="did not drain in time")
            await self.kill()

    async def kill(self) -> None:
        """SIGKILL, as a crash would end it."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()

    @property
    def _title(self) -> str:
        return f"{self.spec.service} {self.spec.name}"


class NatsChild:
    """The embedded nats-server, supervised like the services: started again on its
    port and store, so every client reconnects to the URL it knows and finds its data."""

    service = "nats"

    def __init__(self, server: EmbeddedNats) -> None:
        self._server = server

    @property
    def name(self) -> str:
        return self._server.name

    async def start(self) -> str:
        try:
            await self._server.start()
        except NatsServerError as exc:
            raise ChildFailedError(str(exc)) from None
        return f"nats {self.name} pid={self._server.pid} {self._server.url}"

    async def run_out(self) -> int:
        return await self._server.exited()

    async def stop(self) -> None:
        await self._server.stop()


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
    specs.extend(
        ChildSpec("scheduler", f"scheduler-{i}", (), env) for i in range(1, options.schedulers + 1)
    )
    specs.extend(
        ChildSpec("node", f"node-{i}", ("--kinds", DEMO_KIND_NAMES), env)
        for i in range(1, options.nodes + 1)
    )
    return specs


async def run_stack(options: StackOptions, settings: Settings) -> int:
    stop = stop_signal()
    nats: EmbeddedNats | None = None
    if options.nats_url is None:
        nats = EmbeddedNats(options.data_dir / "nats", own_session=True)
        try:
            await nats.start()
        except NatsServerError as exc:
            print(f"ackwire: {exc}", file=sys.stderr, flush=True)
            return 1
    nats_url = options.nats_url or (nats.url if nats else "")
    print(f"ackwire nats {nats_url}", flush=True)
    _warn_if_development_secret(settings)

    children = [Child(spec) for spec in child_specs(options, nats_url)]
    supervised: list[Supervised] = [*children, *([NatsChild(nats)] if nats else [])]
    try:
        return await _serve(children, supervised, stop)
    finally:
        await asyncio.gather(*(child.stop() for child in children))
        if nats is not None:
            await nats.stop()


async def _serve(
    children: list[Child], supervised: list[Supervised], stop: asyncio.Future[signal.Signals]
) -> int:
    """Start the children, then keep everything up until a signal."""
    announcing = asyncio.ensure_future(_announce(children))
    either: list[asyncio.Future[Any]] = [announcing, stop]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not announcing.done():
        await cancel_and_wait(announcing)
        return 0
    try:
        announcing.result()
    except ChildFailedError as exc:
        # At the first start a child that cannot start is a configuration error (a port
        # taken, say): say so and stop, rather than retry it for ever.
        print(f"ackwire: {exc}", file=sys.stderr, flush=True)
        return 1

    keepers = [
        asyncio.create_task(_keep_up(unit, RestartBackoff()), name=f"keep {unit.name} up")
        for unit in supervised
    ]
    try:
        sig = await stop
        _log.info("up.stopping", signal=sig.name)
        return 0
    finally:
        # Cancelled in its back-off or while starting again, a keeper leaves at most a
        # process that the caller's stop() ends.
        for keeper in keepers:
            await cancel_and_wait(keeper)


async def _announce(children: list[Child]) -> None:
    """Relay each child's started line in the contract's order, then `ready`."""
    announcements = await asyncio.gather(*(child.start() for child in children))
    for announcement in announcements:
        print(f"ackwire started {announcement}", flush=True)
    urls = [
        announcement.rsplit(" ", 1)[1]
        for child, announcement in zip(children, announcements, strict=True)
        if child.service == "gateway"
    ]
    print("ackwire ready " + " ".join(urls), flush=True)


async def _keep_up(unit: Supervised, backoff: RestartBackoff) -> None:
    """Each time `unit` dies, start it again and say so; until cancelled."""
    ready_at = time.monotonic()
    while True:
        ended = _how_it_ended(await unit.run_out())
        announcement = await _start_again(unit, backoff, time.monotonic() - ready_at, ended)
        ready_at = time.monotonic()
        _log.info(
            "up.child_restarted", service=unit.service, child=unit.name, announced=announcement
        )
        print(f"ackwire restarted {announcement}", flush=True)


async def _start_again(
    unit: Supervised, backoff: RestartBackoff, lived_s: float, ended: dict[str, int | str]
) -> str:
    """Wait out the back-off and start `unit`, as often as it takes; its announcement."""
    while True:
        wait_s = backoff.after_death(lived_s)
        _log.warning(
            "up.child_died",
            service=unit.service,
            child=unit.name,
            lived_s=round(lived_s, 1),
            retry_in_s=wait_s,
            **ended,
        )
        await asyncio.sleep(wait_s)
        try:
            return await unit.start()
        except ChildFailedError as exc:
            lived_s, ended = 0.0, {"reason": str(exc)}


def _how_it_ended(status: int) -> dict[str, int | str]:
    """asyncio's exit status: the exit code, or minus the signal that ended it."""
    if status >= 0:
        return {"exit_code": status}
    try:
        return {"signal": signal.Signals(-status).name}
    except ValueError:  # a signal Python has no name for
        return {"signal": str(-status)}
