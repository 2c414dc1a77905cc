"""Topics at the gateway: one NATS subscription per topic, fanned out to its members.

A `TopicFeed` follows one topic's live subject for every connection of this
gateway subscribed to it. Each `TopicMember` (one connection's subscription)
has its own bounded inbox and its own task: it sends the snapshot, the stored
events after it, then the live ones, in order (`ackwire.wire.cursor`). The
feed only puts events into inboxes, never waits: a slow or dead member can not
delay the others. A member whose inbox is full has fallen too far behind; its
connection is closed 4429 (the session stays resumable).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from websockets.exceptions import ConnectionClosed

from ackwire.bus.topics import TopicEvent, TopicStore, TopicStoreError
from ackwire.lifecycle import cancel_and_wait
from ackwire.wire.codes import ErrorCode
from ackwire.wire.cursor import Emit, ReadFirst, TopicCursor
from ackwire.wire.frames import Error, Event, Frame, Subscribed

_log = structlog.get_logger("ackwire.gateway")

_READ_BATCH = 256
_BUS_ERRORS = (NatsError, TimeoutError, TopicStoreError)

SendFrame = Callable[[Frame], Awaitable[None]]


class TopicMember:
    """One connection's subscription to one topic."""

    def __init__(
        self,
        topic: str,
        store: TopicStore,
        send: SendFrame,
        *,
        buffer: int,
        on_overflow: Callable[[], None],
        on_failed: Callable[[TopicMember], None],
    ) -> None:
        self.topic = topic
        self._store = store
        self._send = send
        self._inbox: asyncio.Queue[TopicEvent] = asyncio.Queue(maxsize=buffer)
        self._on_overflow = on_overflow
        self._on_failed = on_failed
        self._task: asyncio.Task[None] | None = None

    def offer(self, event: TopicEvent) -> None:
        """A live event, from the feed; never waits."""
        try:
            self._inbox.put_nowait(event)
        except asyncio.QueueFull:
            self._on_overflow()

    def start(self, ref: str | None) -> None:
        """Join: `subscribed` (for a `subscribe`, not a restore), snapshot, then events."""
        self._task = asyncio.create_task(self._run(ref), name=f"topic {self.topic}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self, ref: str | None) -> None:
        try:
            if ref is not None:
                await self._send(Subscribed(ref=ref, topic=self.topic))
            snapshot = await self._store.snapshot(self.topic)
            cursor = TopicCursor(after=None if snapshot is None else snapshot.seq)
            if snapshot is not None:
                await self._send(
                    Event(topic=self.topic, seq=snapshot.seq, data=snapshot.data, snapshot=True)
                )
                await self._catch_up(cursor, before=None)
            while True:
                await self._emit_in_order(cursor, await self._inbox.get())
        except ConnectionClosed:
            pass  # the connection is over; it leaves every topic on its way out
        except _BUS_ERRORS as exc:
            _log.warning("topic.unreadable", topic=self.topic, error=str(exc) or type(exc).__name__)
            with contextlib.suppress(ConnectionClosed):
                await self._send(
                    Error(
                        ref=ref,
                        code=ErrorCode.UNAVAILABLE,
                        message=f"topic {self.topic} could not be read; subscribe again",
                    )
                )
            self._on_failed(self)  # no longer subscribed: its connection lets it go

    async def _emit_in_order(self, cursor: TopicCursor, event: TopicEvent) -> None:
        verdict = cursor.offer(event.seq, event.previous)
        if isinstance(verdict, ReadFirst):  # live events were lost on the way: read them
            await self._catch_up(cursor, before=event.seq)
            cursor.skip_to(event.previous)  # what the store no longer has is gone
            verdict = cursor.offer(event.seq, event.previous)
        if isinstance(verdict, Emit):
            await self._send(Event(topic=self.topic, seq=event.seq, data=event.data))

    async def _catch_up(self, cursor: TopicCursor, *, before: int | None) -> None:
        """Send the stored events after the cursor (and before `before`, if given)."""
        while True:
            after = cursor.position or 0
            events, complete = await self._store.read(self.topic, after=after, limit=_READ_BATCH)
            for event in events:
                if before is not None and event.seq >= before:
                    return
                if isinstance(cursor.offer(event.seq, event.previous), Emit):
                    await self._send(Event(topic=self.topic, seq=event.seq, data=event.data))
            if complete or not events:
                return


class TopicFeed:
    """One topic's live events at this gateway, for every member."""

    def __init__(self) -> None:
        self.members: set[TopicMember] = set()
        self.subscription: Subscription | None = None

    async def deliver(self, event: TopicEvent) -> None:
        for member in list(self.members):
            member.offer(event)


class TopicHub:
    """Every topic followed at this gateway."""

    def __init__(self, store: TopicStore, *, pending_limit: int) -> None:
        self._store = store
        self._pending_limit = pending_limit
        self._feeds: dict[str, TopicFeed] = {}
        self._lock = asyncio.Lock()  # joins and leaves change the feeds one at a time

    @property
    def store(self) -> TopicStore:
        return self._store

    async def join(self, member: TopicMember) -> None:
        """Add `member` to its topic's feed, following the topic first if need be. Live
        events queue in its inbox from now on; `member.start` sends the snapshot and
        the events. (So the feed is followed before the snapshot is read.)"""
        async with self._lock:
            feed = self._feeds.get(member.topic)
            if feed is None:
                feed = TopicFeed()
                feed.subscription = await self._store.follow(
                    member.topic, feed.deliver, pending_limit=self._pending_limit
                )
                self._feeds[member.topic] = feed
            feed.members.add(member)

    async def leave(self, member: TopicMember) -> None:
        await member.stop()
        async with self._lock:
            feed = self._feeds.get(member.topic)
            if feed is None:
                return
            feed.members.discard(member)
            if not feed.members:
                del self._feeds[member.topic]
                if feed.subscription is not None:
                    try:
                        await feed.subscription.unsubscribe()
                    except NatsError as exc:
                        _log.debug("topic.unsubscribe_failed", error=str(exc))
