"""A session's queue of messages owed, kept in one JetStream stream for every session.

Each session is one subject of `SESSIONS_STREAM`; the stream sequence of a
message is its `seq` on the wire (rising within a session, gaps allowed, the
same on every redelivery). What is owed is exactly what is left on the
subject: a client's ack becomes a server-confirmed purge (everything up to a
seq) or delete (one message). The stream republishes every stored message to
the session's live subject, with the previous sequence of the same subject in
`Nats-Last-Sequence`, so a gap in the live feed shows.

No consumer per session: a resume storm creates nothing on the servers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.connect import Overflows
from ackwire.bus.deletes import delete_message
from ackwire.bus.direct_get import read_batch
from ackwire.bus.models import Delivery

_log = structlog.get_logger("ackwire.bus")


@dataclass(frozen=True, slots=True)
class Stored:
    """A message of a session's queue: its stream sequence, the one before it, and it."""

    seq: int
    previous: int
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class StoreRead:
    messages: list[Stored]
    complete: bool
    """The read reached the end of the queue (else it stopped at its limit)."""


class SessionQueue:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        overflows: Overflows | None = None,
        *,
        replicated: bool = True,
    ) -> None:
        self._nc = nc
        self._js = js
        self._overflows = overflows or Overflows()
        self._replicated = replicated  # the stream has replicas that may lag its leader

    async def owed(self) -> int:
        """How many messages are stored for all sessions (none acked yet)."""
        with bus_errors("counting what is owed"):
            info = await self._js.stream_info(subjects.SESSIONS_STREAM)
        return info.state.messages

    async def put(self, delivery: Delivery) -> int:
        """Store a message for its session; returns its `seq` once the store confirmed it.

        The session and the delivery's `id` make the store's dedupe id: a put retried
        after a lost answer is stored once (and one message sent to two sessions of a
        user is stored for each). Raises `BusError`."""
        with bus_errors(f"storing {delivery.id} for {delivery.session_id}"):
            ack = await self._js.publish(
                subjects.session_subject(delivery.session_id),
                delivery.to_bytes(),
                headers={"Nats-Msg-Id": f"{delivery.session_id}/{delivery.id}"},
            )
        return ack.seq

    async def follow(
        self,
        session_id: str,
        on_message: Callable[[Stored], Awaitable[None]],
        *,
        pending_limit: int,
        on_dropped: Callable[[], None] = lambda: None,
    ) -> Subscription:
        """Receive the session's messages as they are stored (at most `pending_limit` unread;
        past it NATS drops them, and `on_dropped` is told)."""

        async def receive(msg: Msg) -> None:
            stored = _stored(msg)
            if stored is not None:
                await on_message(stored)

        with bus_errors(f"following {session_id}"):
            subscription = await self._nc.subscribe(
                subjects.live_subject(session_id), cb=receive, pending_msgs_limit=pending_limit
            )
        self._overflows.watch(subscription, on_dropped)
        return subscription

    async def read(self, session_id: str, after: int, limit: int) -> StoreRead:
        """Up to `limit` stored messages of the session with `seq > after`, in order."""
        return await self.read_subject(subjects.session_subject(session_id), after, limit)

    async def read_subject(self, subject: str, after: int, limit: int) -> StoreRead:
        """Up to `limit` stored messages on `subject` (wildcards allowed) with `seq > after`,
        in order. `previous` is the message before in this read (or `after`)."""
        with bus_errors(f"reading {subject}"):
            batch = await read_batch(
                self._nc, subjects.SESSIONS_STREAM, subject, after=after, limit=limit
            )
        messages: list[Stored] = []
        for msg in batch.messages:
            stored = _stored(msg, previous=messages[-1].seq if messages else after)
            if stored is not None:
                messages.append(stored)
        return StoreRead(messages, complete=batch.complete)

    async def leader_last(self, session_id: str, read: StoreRead, after: int) -> int:
        """For a read that reached the end of the queue: the session's newest seq by the
        stream's leader (a replica may answer a read behind it). Without replicas the
        read was the leader's, and no second question is asked."""
        if not self._replicated:
            return read.messages[-1].seq if read.messages else after
        return await self.last_seq(session_id)

    async def last_seq(self, session_id: str) -> int:
        """The seq of the session's newest stored message (0: none). Asked of the stream's
        leader, so a message stored a moment ago is not missed."""
        with bus_errors(f"asking for the last message of {session_id}"):
            try:
                msg = await self._js.get_msg(
                    subjects.SESSIONS_STREAM, subject=subjects.session_subject(session_id)
                )
            except NotFoundError:
                return 0
        return msg.seq or 0

    async def unfollow(self, subscription: Subscription) -> None:
        self._overflows.forget(subscription)
        with bus_errors("unsubscribing from a live feed"):
            await subscription.unsubscribe()

    async def confirm(
        self, session_id: str, *, upto: int | None, singles: tuple[int, ...]
    ) -> frozenset[int]:
        """Remove acked messages from the store: each of `singles`, then every message up
        to `upto`. Returns once the store confirmed it, with the singles that were gone
        already. Raises `BusError`: then some, all or none of them may be gone."""
        gone: set[int] = set()
        with bus_errors(f"confirming acks for {session_id}"):
            for seq in singles:
                if not await delete_message(self._nc, subjects.SESSIONS_STREAM, seq):
                    gone.add(seq)  # acked twice, purged meanwhile, or expired
            if upto is not None:
                await self._js.purge_stream(
                    subjects.SESSIONS_STREAM,
                    subject=subjects.session_subject(session_id),
                    seq=upto + 1,
                )
        return frozenset(gone)


def _stored(msg: Msg, previous: int | None = None) -> Stored | None:
    headers = msg.headers or {}
    try:
        seq = int(headers["Nats-Sequence"])
        before = int(headers.get("Nats-Last-Sequence", "0")) if previous is None else previous
        return Stored(seq, before, Delivery.model_validate_json(msg.data))
    except (KeyError, ValueError, ValidationError) as exc:
        _log.error("session_queue.unreadable_message", subject=msg.subject, error=str(exc))
        return None
