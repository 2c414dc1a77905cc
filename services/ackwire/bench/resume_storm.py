"""`ackwire bench resume-storm`: a gateway holding N sessions is killed -9; how long until
every one of them has resumed on the surviving gateway and has its owed message again?

The baseline, measured in the same run against the same gateway: N new sessions opened
with the same concurrency. The difference is what a resume costs over a plain connect
(a compare-and-set of the session's record, a release request nobody answers, a backlog
read).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
from websockets.asyncio.client import ClientConnection, connect

from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.models import Delivery
from ackwire.bus.session_queue import SessionQueue
from ackwire.cli.up import Child, ChildSpec
from ackwire.tokens import mint_token
from ackwire.wire import encode, parse_server_frame
from ackwire.wire.frames import SUBPROTOCOL, Deliver, Hello, ResumeRequest, Welcome

_WAIT_S = 60.0


class BenchFailedError(Exception):
    """The system under test broke a rule while being measured."""


@dataclass
class BenchSession:
    token: str
    welcome: Welcome | None = None
    ws: ClientConnection | None = None


@dataclass(frozen=True, slots=True)
class Phase:
    """Latencies (seconds) of one phase, and how long the whole phase took."""

    latencies: list[float]
    elapsed: float

    def line(self, what: str) -> str:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{what}: {len(ordered)} in {self.elapsed:.2f} s = {len(ordered) / self.elapsed:.0f}/s;"
            f" per session p50 {statistics.median(ordered) * 1000:.0f} ms,"
            f" p99 {p99 * 1000:.0f} ms"
        )


async def _hello(url: str, hello: Hello) -> tuple[ClientConnection, Welcome]:
    ws = await connect(url, subprotocols=[SUBPROTOCOL], max_queue=None, ping_interval=None)  # type: ignore[list-item]
    await ws.send(encode(hello))
    welcome = parse_server_frame(await ws.recv())
    if not isinstance(welcome, Welcome):
        raise BenchFailedError(f"expected a welcome, got {welcome!r}")
    return ws, welcome


async def _owed(ws: ClientConnection) -> Deliver:
    frame = parse_server_frame(await ws.recv())
    if not isinstance(frame, Deliver):
        raise BenchFailedError(f"expected a deliver, got {frame!r}")
    return frame


async def _timed_all(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> Phase:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def timed(i: int) -> None:
        async with gate:
            began = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with asyncio.timeout(_WAIT_S):
        await asyncio.gather(*(timed(i) for i in range(count)))
    return Phase(latencies, time.perf_counter() - began)


async def run_resume_storm(sessions: int, concurrency: int, nats_url: str | None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="ackwire-bench-"))
    server = None if nats_url else EmbeddedNats(workdir / "nats", own_session=True)
    if server is not None:
        await server.start()
    url = nats_url or (server.url if server else "")
    secret = secrets.token_urlsafe(32)
    env = dict(
        os.environ,
        ACKWIRE_NATS_URL=url,
        ACKWIRE_JWT_SECRET=secret,
        ACKWIRE_LOG_LEVEL="warning",
        ACKWIRE_LOG_FORMAT="json",
    )
    log = (workdir / "gateways.log").open("wb")
    children: list[Child] = []
    clients = [BenchSession(mint_token(secret, f"bench-{i}")) for i in range(sessions)]
    try:
        children.extend(
            Child(ChildSpec("gateway", name, ("--port", "0"), env), log.fileno())
            for name in ("gw-a", "gw-b")
        )
        url_a, url_b = [
            announcement.split()[-1]
            for announcement in await asyncio.gather(*(child.start() for child in children))
        ]
        print(
            f"ackwire bench resume-storm: {sessions} sessions, {concurrency} handshakes at once,"
            f" {os.cpu_count()} cores, NATS {url}; gateway logs in {log.name}",
            flush=True,
        )

        baseline = await _timed_all(
            sessions, concurrency, lambda i: _fresh(url_b, clients[i].token, close=True)
        )
        print(baseline.line("baseline  new sessions on gw-b         "), flush=True)

        async def open_on_a(i: int) -> None:
            clients[i].ws, clients[i].welcome = await _hello(url_a, Hello(token=clients[i].token))

        await _timed_all(sessions, concurrency, open_on_a)
        await _owe_one_each(url, clients)

        await children[0].kill()

        async def resume_on_b(i: int) -> None:
            client = clients[i]
            assert client.welcome is not None
            resume = ResumeRequest(
                session_id=client.welcome.session_id, resume_token=client.welcome.resume_token
            )
            ws, again = await _hello(url_b, Hello(token=client.token, resume=resume))
            if not again.resumed:
                raise BenchFailedError(f"session {again.session_id} did not resume: {again.reason}")
            redelivered = await _owed(ws)
            if not redelivered.redelivered:
                raise BenchFailedError("the owed message came back without `redelivered`")
            client.ws = ws

        storm = await _timed_all(sessions, concurrency, resume_on_b)
        print(storm.line("storm     resumed on gw-b after kill -9 "), flush=True)
        print(
            f"every session resumed and got its owed message again: {sessions}/{sessions};"
            f" a resume costs {storm.elapsed / baseline.elapsed:.2f}x a new session",
            flush=True,
        )
        return 0
    finally:
        await asyncio.gather(
            *(c.ws.close() for c in clients if c.ws is not None), return_exceptions=True
        )
        await asyncio.gather(*(child.stop() for child in children))
        log.close()
        if server is not None:
            await server.stop()


async def _fresh(url: str, token: str, *, close: bool) -> None:
    ws, _ = await _hello(url, Hello(token=token))
    if close:
        await ws.close()


async def _owe_one_each(nats_url: str, clients: list[BenchSession]) -> None:
    """Store one message per session and wait until each client has it (unacked)."""
    nc = await nats.connect(nats_url.split(","))
    try:
        queue = SessionQueue(nc, nc.jetstream())
        for start in range(0, len(clients), 256):
            batch = clients[start : start + 256]
            await asyncio.gather(
                *(
                    queue.put(
                        Delivery(
                            id=f"bench-{c.welcome.session_id}",
                            kind="message",
                            session_id=c.welcome.session_id,
                            data={},
                        )
                    )
                    for c in batch
                    if c.welcome is not None
                )
            )
    finally:
        await nc.close()
    async with asyncio.timeout(_WAIT_S):
        await asyncio.gather(*(_owed(c.ws) for c in clients if c.ws is not None))
