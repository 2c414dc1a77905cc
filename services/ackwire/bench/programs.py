"""Client programs, each in a process of its own (spawned by multiprocessing), so that
no client shares an event loop, or the interpreter's lock, with the stack under test or
with the bench that watches it.

A program is `async def main(params, link) -> result`, a module-level function; its
params and result are pickled across. `link.ready(detail)` tells the bench it is ready
(its sessions are open, say) and what the bench needs to know (their ids);
`await link.told()` waits for the bench's next word (a server waits for the word to
stop). A program that raises ends with one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar, cast

from ackwire.bench import BenchFailedError
from ackwire.lifecycle import cancel_and_wait
from ackwire.logs import configure_logging
from ackwire.settings import LogFormat

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")

_READY, _RESULT, _FAILED = "ready", "result", "failed"
_STOP_S = 10.0


class Link:
    """A program's end of its pipe to the bench."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def ready(self, detail: object = None) -> None:
        self._conn.send((_READY, detail))

    async def told(self) -> None:
        await _readable(self._conn)
        self._conn.recv()


Program = Callable[[P, Link], Coroutine[Any, Any, R]]


def _run(program: Program[P, R], params: P, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # on Ctrl-C the bench stops its programs
    configure_logging(LogFormat.JSON, "error")  # its failure is the bench's one line
    try:
        result = asyncio.run(program(params, Link(conn)))
    except Exception as exc:  # every failure becomes the bench's one line
        conn.send((_FAILED, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))
    else:
        conn.send((_RESULT, result))


class ClientProcess(Generic[R]):
    """The bench's end: start a program, hear it is ready, tell it, read its result."""

    def __init__(self, name: str, process: multiprocessing.process.BaseProcess, conn: Connection):
        self.name = name
        self._process = process
        self._conn = conn

    @classmethod
    def start(cls, name: str, program: Program[P, R], params: P) -> ClientProcess[R]:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_run, args=(program, params, theirs), name=name, daemon=True
        )
        process.start()
        theirs.close()
        return cls(name, process, ours)

    async def ready(self, of: type[T], within_s: float) -> T:
        """What the program said it is ready with (an instance of `of`)."""
        kind, detail = await self._next(within_s)
        if kind != _READY or not isinstance(detail, of):
            raise BenchFailedError(f"{self.name} sent {kind} {detail!r} instead of ready")
        return detail

    def tell(self) -> None:
        self._conn.send(None)

    async def result(self, within_s: float) -> R:
        kind, result = await self._next(within_s)
        if kind != _RESULT:
            raise BenchFailedError(f"{self.name} sent {kind} instead of its result")
        return cast(R, result)  # what `program` returned, unpickled

    async def stop(self) -> None:
        """End the process if it has not ended by itself (a failure elsewhere)."""
        if self._process.is_alive():
            self._process.terminate()
        await asyncio.to_thread(self._process.join, _STOP_S)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join)
        self._conn.close()

    async def _next(self, within_s: float) -> tuple[str, object]:
        try:
            async with asyncio.timeout(within_s):
                await _readable(self._conn)
            kind, value = self._conn.recv()
        except TimeoutError:
            raise BenchFailedError(f"{self.name} did not answer within {within_s:.0f} s") from None
        except EOFError:
            await asyncio.to_thread(self._process.join, _STOP_S)
            raise BenchFailedError(
                f"{self.name} exited with {self._process.exitcode} before answering"
            ) from None
        if kind == _FAILED:
            raise BenchFailedError(f"{self.name}: {value}")
        return kind, value


@contextlib.asynccontextmanager
async def started(name: str, program: Program[P, R], params: P) -> AsyncIterator[ClientProcess[R]]:
    """A program running for the block, stopped after it whatever happened."""
    process = ClientProcess.start(name, program, params)
    try:
        yield process
    finally:
        await process.stop()


async def run(name: str, program: Program[P, R], params: P, within_s: float) -> R:
    """A program's result, once it has run to its end."""
    async with started(name, program, params) as process:
        return await process.result(within_s)


async def beside(
    work: Coroutine[Any, Any, T], helper: Coroutine[Any, Any, None], helper_name: str
) -> T:
    """`work`'s result, with `helper` (a connection's reader, say) running beside it until
    `work` is done. If `helper` ends first, `work` is stopped and the bench fails with
    the helper's error, instead of waiting for what the helper will never bring."""
    working, helping = asyncio.ensure_future(work), asyncio.ensure_future(helper)
    try:
        await asyncio.wait([working, helping], return_when=asyncio.FIRST_COMPLETED)
        if helping.done():
            helping.result()
            raise BenchFailedError(f"{helper_name} ended before the work was done")
        return working.result()
    finally:
        for task in (working, helping):
            if not task.done():
                await cancel_and_wait(task)


async def _readable(conn: Connection) -> None:
    """Until the pipe has something to read (or the other end closed it)."""
    if conn.poll():
        return
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def woken() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), woken)
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())
