"""Running `ackwire …` as a real child process, reading its stdout lines and JSON logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, ClassVar

from ackwire.lifecycle import cancel_and_wait

WAIT_S = 30.0


def two_free_ports() -> int:
    """A port p such that p and p+1 are free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535:
            with socket.socket() as next_one:
                try:
                    next_one.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two consecutive free ports")


class AckwireProcess:
    """One `python -m ackwire.cli …` process; every wait on it is bounded."""

    #: Every process started and not yet seen to exit, so that a failed test leaves
    #: none behind (see `kill_leftovers`).
    started: ClassVar[set[AckwireProcess]] = set()

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout_lines: list[str] = []
        self.logs: list[dict[str, Any]] = []
        self.stderr_text: list[str] = []
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._read(process.stdout, self._on_stdout)),
            asyncio.create_task(self._read(process.stderr, self._on_stderr)),
        ]

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> AckwireProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ackwire.cli",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "ACKWIRE_LOG_FORMAT": "json", **(env or {})},
        )
        started = cls(process)
        cls.started.add(started)
        return started

    @classmethod
    async def kill_leftovers(cls) -> None:
        """SIGKILL every process a test started and did not stop (a failed test), with
        the processes it started (`ackwire up`'s children would hold its pipes open),
        and reap it while the test's event loop still runs."""
        for leftover in cls.started:
            if leftover.process.returncode is None:
                # It first, so that an `up` cannot start a child again meanwhile.
                for pid in [leftover.pid, *_descendants(leftover.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                await leftover.process.wait()
            for reader in leftover._readers:
                await cancel_and_wait(reader)
        cls.started.clear()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stdout_line(self, index: int, timeout: float = WAIT_S) -> str:
        """The `index`-th line printed on stdout (0-based)."""
        await self._until(lambda: len(self.stdout_lines) > index, timeout, f"stdout line {index}")
        return self.stdout_lines[index]

    async def log_event(
        self, name: str, timeout: float = WAIT_S, *, since: int = 0, **fields: Any
    ) -> dict[str, Any]:
        """The first log event `name` with these fields, among the lines logged from the
        `since`-th on (`len(process.logs)` taken earlier: only what came after)."""

        def found() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in self.logs[since:]
                    if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
                ),
                None,
            )

        await self._until(lambda: found() is not None, timeout, f"log event {name}")
        event = found()
        assert event is not None
        return event

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = WAIT_S) -> int:
        """Send `sig` and return the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await self.exit_code(timeout)

    async def exit_code(self, timeout: float = WAIT_S) -> int:
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(
                f"no exit within {timeout} s; stderr:\n" + "".join(self.stderr_text[-20:])
            ) from None
        await asyncio.gather(*self._readers)
        return code

    async def _until(self, condition: Any, timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    if self.process.returncode is not None and all(r.done() for r in self._readers):
                        raise AssertionError(
                            f"process exited ({self.process.returncode}) before {what}; stderr:\n"
                            + "".join(self.stderr_text[-20:])
                        )
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {timeout} s; stderr:\n" + "".join(self.stderr_text[-20:])
            ) from None

    async def _read(self, stream: asyncio.StreamReader | None, on_line: Any) -> None:
        assert stream is not None
        async for raw in stream:
            on_line(raw.decode(errors="replace"))
            self._changed.set()
        self._changed.set()

    def _on_stdout(self, line: str) -> None:
        self.stdout_lines.append(line.rstrip("\n"))

    def _on_stderr(self, line: str) -> None:
        self.stderr_text.append(line)
        try:
            event = json.loads(line)
        except ValueError:
            return
        if isinstance(event, dict):
            self.logs.append(event)


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from Linux's /proc)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # it has gone
        return []
    found = []
    for task in tasks:
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    return found
