"""`ackwire bench messages`: `Publisher.send` to sessions, end to end.

A backend sends with many sends in flight, round robin over the sessions; each session's
client acks `upto` the highest `seq` it has every few milliseconds. Stored/s counts the
sends' returns (every copy stored); delivered/s counts the receipts (the client acked it
and the store confirmed the ack), so it is the whole path, backend to client and back.
Beside them, in the same run: raw JetStream publishing as far ahead and consuming (pull,
confirmed ack) as it goes, and python-socketio's emit with ack.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from ackwire.bench import baselines, programs
from ackwire.bench.baselines import PAYLOAD, RAW_JETSTREAM, SOCKETIO, Load
from ackwire.bench.figures import Measured, Report, RoundTrips, closed_loop, now
from ackwire.bench.programs import Link, beside
from ackwire.bench.sessions import open_session
from ackwire.bench.stack import BenchStack, StackShape
from ackwire.publisher import Publisher
from ackwire.tokens import mint_token
from ackwire.wire import encode, parse_server_frame
from ackwire.wire.frames import Ack, Deliver, Hello

_RUN_WITHIN_S = 180.0

STACK = StackShape(gateways=1)


@dataclass(frozen=True, slots=True)
class Sizes:
    sessions: int
    in_flight: int
    """Sends in flight, over all sessions."""
    count: int
    ack_every_s: float
    baseline_count: int


FULL = Sizes(4, 256, 10_000, 0.005, 20_000)
QUICK = Sizes(4, 256, 1_000, 0.005, 2_000)


@dataclass(frozen=True, slots=True)
class ReceiversParams:
    url: str
    tokens: list[str]
    """One session each."""
    per_session: int
    ack_every_s: float


async def receive_messages(params: ReceiversParams, link: Link) -> int:
    """The clients' program: ready with the sessions' ids; then each reads its share and
    acks as it goes. Returns how many distinct messages arrived."""
    opened = await asyncio.gather(
        *(open_session(params.url, Hello(token=token)) for token in params.tokens)
    )
    link.ready([welcome.session_id for _, welcome in opened])
    try:
        async with asyncio.timeout(_RUN_WITHIN_S):
            received = await asyncio.gather(
                *(_receive(ws, params.per_session, params.ack_every_s) for ws, _ in opened)
            )
    finally:
        # Closing is safe at once: the gateway confirms every ack it read before it lets go.
        await asyncio.gather(*(ws.close() for ws, _ in opened))
    return sum(received)


async def _receive(ws: ClientConnection, expected: int, ack_every_s: float) -> int:
    seen: set[str] = set()
    highest = acked = 0

    async def read_all() -> None:
        nonlocal highest
        async for data in ws:
            frame = parse_server_frame(data)
            if isinstance(frame, Deliver):
                seen.add(frame.id)
                highest = max(highest, frame.seq)
                if len(seen) == expected:
                    return

    async def ack() -> None:
        nonlocal acked
        if highest > acked:
            acked = highest
            await ws.send(encode(Ack(upto=acked)))

    async def ack_every_while() -> None:
        while True:
            await asyncio.sleep(ack_every_s)  # the client's cadence, not a wait for anything
            await ack()

    await beside(read_all(), ack_every_while(), helper_name="the acking")
    await ack()
    return len(seen)


@dataclass(frozen=True, slots=True)
class SendParams:
    nats_url: str
    session_ids: list[str]
    count: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class SendTimes:
    stored: RoundTrips
    """From each send to its return (stored)."""
    delivered: float
    """When the last receipt came (acked by the client, confirmed by the store)."""

    @property
    def delivered_rate(self) -> float:
        return len(self.stored.latencies) / (self.delivered - self.stored.began)


async def send_messages(params: SendParams, _link: Link) -> SendTimes:
    """The backend's program: sends, `in_flight` at a time, and follows the receipts."""
    publisher = await Publisher.connect(params.nats_url, producer="bench")
    receipts = await publisher.receipts()

    async def all_delivered() -> float:
        delivered: set[str] = set()
        async for receipt in receipts:
            if receipt.outcome == "delivered":
                delivered.add(receipt.message_id)
                if len(delivered) == params.count:
                    return now()
        raise ConnectionError("the receipts ended")

    async def send(i: int) -> None:
        session = params.session_ids[i % len(params.session_ids)]
        await publisher.send(PAYLOAD, session=session, message_id=f"m-{i}")

    try:
        async with asyncio.timeout(_RUN_WITHIN_S):
            waiting = asyncio.ensure_future(all_delivered())
            stored = await closed_loop(params.count, params.in_flight, send)
            return SendTimes(stored, await waiting)
    finally:
        await receipts.close()
        await publisher.close()


async def measure(sizes: Sizes, workdir: Path, nats_url: str | None) -> Report:
    report = Report(
        "messages",
        f"Publisher.send of {sizes.count} messages to {sizes.sessions} sessions,"
        f" {sizes.in_flight} in flight; clients ack `upto` every"
        f" {sizes.ack_every_s * 1000:.0f} ms; stack: {STACK.describe()}",
    )
    per_session = sizes.count // sizes.sessions
    count = per_session * sizes.sessions
    async with BenchStack(STACK, workdir, nats_url) as stack:
        tokens = [mint_token(stack.secret, f"bench-{i}") for i in range(sizes.sessions)]
        clients = ReceiversParams(stack.gateway_urls[0], tokens, per_session, sizes.ack_every_s)
        async with programs.started("the message clients", receive_messages, clients) as receiving:
            session_ids = await receiving.ready(list, _RUN_WITHIN_S)
            backend = SendParams(stack.nats_url, session_ids, count, sizes.in_flight)
            sent = await programs.run("the backend", send_messages, backend, _RUN_WITHIN_S + 10)
            await receiving.result(_RUN_WITHIN_S)
        js = await baselines.raw_jetstream(
            stack.nats_url, Load(sizes.baseline_count, 1, sizes.in_flight), gated=False
        )
    [sio] = await baselines.python_socketio(
        Load(sizes.baseline_count, sizes.sessions, sizes.in_flight // sizes.sessions)
    )
    report.add(
        Measured("stored", "sends stored", sent.stored.rate, "msg/s"),
        RAW_JETSTREAM.measured("stored", js.stored.rate, "msg/s"),
    )
    report.add(
        Measured("delivered", "delivered, acked, confirmed", sent.delivered_rate, "msg/s"),
        RAW_JETSTREAM.measured("delivered", js.trips.rate, "msg/s"),
        SOCKETIO.measured("delivered", sio.rate, "msg/s"),
    )
    return report
