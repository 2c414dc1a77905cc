"""What every service process does around its work: start, announce, drain on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Coroutine
from typing import Any, Protocol

import structlog

from ackwire.tracing import export_if_configured

_log = structlog.get_logger("ackwire")


class Service(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str | None: ...

    async def start(self) -> None:
        """Connect (waiting for NATS as long as it takes) and begin serving."""

    async def drain(self) -> None:
        """Stop taking work, finish or hand back what is in flight, disconnect."""


def announce_started(service: str, name: str, url: str | None = None) -> None:
    """Print the `ackwire started …` line of operations.md; tools parse it from stdout."""
    line = f"ackwire started {service} {name} pid={os.getpid()}"
    print(f"{line} {url}" if url else line, flush=True)


def stop_signal() -> asyncio.Future[signal.Signals]:
    """A future that SIGTERM or SIGINT completes; the handlers are in place on return."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return received


async def run_until_stopped(kind: str, service: Service) -> None:
    """Start `service`, announce it, serve until SIGTERM/SIGINT, then drain.

    A signal while the service still waits for NATS stops it cleanly too.
    """
    structlog.contextvars.bind_contextvars(**{kind: service.name})
    export_if_configured(kind)
    stop = stop_signal()
    starting = asyncio.ensure_future(service.start())
    either: list[asyncio.Future[Any]] = [starting, stop]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        _log.info("service.stopped_before_start", service=kind, signal=stop.result().name)
        await service.drain()
        return
    try:
        starting.result()
    except BaseException:
        await service.drain()
        raise
    # What start-up made (modules, models, schemas) lives as long as the process: out of
    # the collector's way, so its full collections stay short under load.
    gc.freeze()
    announce_started(kind, service.name, service.url)
    sig = await stop
    _log.info("service.stopping", service=kind, signal=sig.name)
    await service.drain()


#: How long to wait for a cancelled task before cancelling it again.
_RECANCEL_S = 0.05


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has finished its clean-up.

    Cancels again until the task is done: on Python 3.11, `asyncio.wait_for` (which
    nats-py's requests run on) swallows a cancellation that arrives just as the
    answer does, and a loop that went on from there would never end."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_S)
    if not task.cancelled():
        task.result()  # raises what the task raised, as awaiting it would


class BackgroundTasks:
    """Tasks a component starts and does not await where it starts them: kept referenced
    until done (asyncio holds only weak references), and ended with the component."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str | None = None) -> None:
        self.adopt(asyncio.create_task(work, name=name))

    def adopt(self, task: asyncio.Task[None]) -> None:
        """Keep a task someone else started until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finish(self) -> None:
        """Wait until every task has ended on its own."""
        await asyncio.gather(*self._tasks)

    async def cancel(self) -> None:
        for task in list(self._tasks):
            await cancel_and_wait(task)
