"""`ackwire bench resume-storm`: a gateway holding N sessions is killed -9; how long until
every one of them has resumed on the surviving gateway and has its owed message again?

The baseline, measured in the same run against the same gateway: N new sessions opened
with the same concurrency. The difference is what a resume costs over a plain connect
(a compare-and-set of the session's record, a release request nobody answers, a backlog
read).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import nats
from websockets.asyncio.client import ClientConnection

from ackwire.bench import BenchFailedError, programs
from ackwire.bench.figures import Measured, Peer, Report, RoundTrips, closed_loop
from ackwire.bench.programs import Link
from ackwire.bench.sessions import open_session
from ackwire.bench.stack import BenchStack, StackShape
from ackwire.bus.models import Delivery
from ackwire.bus.session_queue import SessionQueue
from ackwire.tokens import mint_token
from ackwire.wire import parse_server_frame
from ackwire.wire.frames import Deliver, Hello, ResumeRequest, Welcome

_WAIT_S = 60.0

STACK = StackShape(gateways=2)
NEW_SESSIONS = Peer("new_sessions", "new sessions on gw-2, as many at once")


@dataclass(frozen=True, slots=True)
class Sizes:
    sessions: int
    concurrency: int
    """Handshakes at once."""


FULL = Sizes(2000, 256)
QUICK = Sizes(200, 64)


@dataclass(frozen=True, slots=True)
class StormParams:
    doomed_url: str
    """The gateway to be killed."""
    surviving_url: str
    tokens: list[str]
    concurrency: int


@dataclass(frozen=True, slots=True)
class StormTimes:
    new_sessions: RoundTrips
    resumed: RoundTrips
    """From each resume's connect to its owed message, redelivered."""


async def storm_clients(params: StormParams, link: Link) -> StormTimes:
    """The clients' program. Ready twice: with the sessions' ids once all are open on the
    doomed gateway; then once each holds its owed message unacked. Told: it was killed."""
    count, at_once = len(params.tokens), params.concurrency

    async def new_session(i: int) -> None:
        ws, _ = await open_session(params.surviving_url, Hello(token=params.tokens[i]))
        await ws.close()

    held: dict[int, tuple[ClientConnection, Welcome]] = {}

    async def open_on_doomed(i: int) -> None:
        held[i] = await open_session(params.doomed_url, Hello(token=params.tokens[i]))

    async def resume(i: int) -> None:
        _, welcome = held[i]
        hello = Hello(
            token=params.tokens[i],
            resume=ResumeRequest(session_id=welcome.session_id, resume_token=welcome.resume_token),
        )
        ws, again = await open_session(params.surviving_url, hello)
        held[i] = (ws, again)
        if not again.resumed:
            raise BenchFailedError(f"session {again.session_id} did not resume: {again.reason}")
        if not (await _owed(ws)).redelivered:
            raise BenchFailedError("the owed message came back without `redelivered`")

    try:
        async with asyncio.timeout(_WAIT_S):
            baseline = await closed_loop(count, at_once, new_session)
            await closed_loop(count, at_once, open_on_doomed)
            link.ready([welcome.session_id for _, welcome in held.values()])
            await asyncio.gather(*(_owed(ws) for ws, _ in held.values()))
            link.ready()
        await link.told()
        async with asyncio.timeout(_WAIT_S):
            storm = await closed_loop(count, at_once, resume)
    finally:
        await asyncio.gather(*(ws.close() for ws, _ in held.values()))
    return StormTimes(baseline, storm)


async def _owed(ws: ClientConnection) -> Deliver:
    frame = parse_server_frame(await ws.recv())
    if not isinstance(frame, Deliver):
        raise BenchFailedError(f"expected a deliver, got {frame!r}")
    return frame


async def _owe_one_each(nats_url: str, session_ids: list[str]) -> None:
    """Store one message per session."""
    nc = await nats.connect(nats_url.split(","))
    try:
        queue = SessionQueue(nc, nc.jetstream())
        for start in range(0, len(session_ids), 256):
            await asyncio.gather(
                *(
                    queue.put(Delivery(id=f"bench-{sid}", kind="message", session_id=sid, data={}))
                    for sid in session_ids[start : start + 256]
                )
            )
    finally:
        await nc.close()


async def measure(sizes: Sizes, workdir: Path, nats_url: str | None) -> Report:
    report = Report(
        "resume-storm",
        f"{sizes.sessions} sessions on gw-1, each owed a message, gw-1 killed -9, all resumed"
        f" on gw-2, {sizes.concurrency} handshakes at once; stack: {STACK.describe()}",
    )
    async with BenchStack(STACK, workdir, nats_url) as stack:
        tokens = [mint_token(stack.secret, f"bench-{i}") for i in range(sizes.sessions)]
        doomed, surviving = stack.gateway_urls
        params = StormParams(doomed, surviving, tokens, sizes.concurrency)
        async with programs.started("the storm's clients", storm_clients, params) as clients:
            session_ids = await clients.ready(list, _WAIT_S * 2)
            await _owe_one_each(stack.nats_url, session_ids)
            await clients.ready(type(None), _WAIT_S)
            await stack.kill_gateway(0)
            clients.tell()
            times = await clients.result(_WAIT_S + 10)
    storm, new = times.resumed, times.new_sessions
    report.add(
        Measured("storm", "all resumed after kill -9", storm.ended - storm.began, "s"),
        NEW_SESSIONS.measured("storm", new.ended - new.began, "s"),
    )
    report.add(
        Measured("rate", "resumes", storm.rate, "sessions/s"),
        NEW_SESSIONS.measured("rate", new.rate, "sessions/s"),
    )
    for q in (50, 99):
        report.add(
            Measured(f"p{q}", f"per session p{q}", storm.ms(q), "ms"),
            NEW_SESSIONS.measured(f"p{q}", new.ms(q), "ms"),
        )
    return report
