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
from nats.js.errors import Error as JetStreamError
from websockets.exceptions import ConnectionClosed

from ackwire.bus.topics import TopicEvent, TopicStore, TopicStoreError
from ackwire.lifecycle import BackgroundTasks, cancel_and_wait
from ackwire.wire.codes import ErrorCode
from ackwire.wire.cursor import Emit, ReadFirst, TopicCursor
from ackwire.wire.frames import (
    Error,
    Event,
    Frame,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from ackwire.wire.topics import BadTopicError, allowed, topic_name

_log = structlog.get_logger("ackwire.gateway")

_READ_BATCH = 256
_BUS_ERRORS = (NatsError, TimeoutError, TopicStoreError)
#: What writing the session's subscriptions to its record may raise.
RECORD_ERRORS = (NatsError, JetStreamError, TimeoutError)

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
        """End the task. An exception it died of (a bug) is logged here, never raised into
        the clean-up of its connection, which has other members to end."""
        try:
            await cancel_and_wait(self._task)
        except Exception:
            _log.exception("topic.member_crashed", topic=self.topic)

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


RecordTopics = Callable[[tuple[str, ...]], Awaitable[None]]


class ConnectionTopics:
    """One connection's subscriptions: `subscribe`, `unsubscribe`, the restore after a
    resume, and leaving every topic when the connection ends."""

    def __init__(
        self,
        hub: TopicHub,
        send: SendFrame,
        *,
        claims: tuple[str, ...],
        record: RecordTopics,
        buffer: int,
        max_topics: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self._hub = hub
        self._send = send
        self._claims = claims
        self._record = record
        self._buffer = buffer
        self._max_topics = max_topics
        self._on_overflow = on_overflow
        self._members: dict[str, TopicMember] = {}
        self._restoring: list[TopicMember] = []
        self._dropped: tuple[str, ...] = ()
        self._leaving = BackgroundTasks()

    async def subscribe(self, frame: Subscribe) -> None:
        refusal = self._refusal(frame.topic)
        if refusal is not None:
            code, message = refusal
            await self._send(Error(ref=frame.ref, code=code, message=message))
            return
        if frame.topic in self._members:
            await self._send(Subscribed(ref=frame.ref, topic=frame.topic))
            return
        if await self._recorded((*self._members, frame.topic), frame.ref):
            (await self._follow(frame.topic)).start(frame.ref)

    async def unsubscribe(self, frame: Unsubscribe) -> None:
        member = self._members.pop(frame.topic, None)
        if member is not None:
            await self._hub.leave(member)
            if not await self._recorded(tuple(self._members), frame.ref):
                return
        await self._send(Unsubscribed(ref=frame.ref, topic=frame.topic))

    async def follow_restored(self, topics: tuple[str, ...]) -> None:
        """Before a resumed `welcome`: follow the session's topics the token still allows,
        so no event published after the client has its `welcome` is missed."""
        self._dropped = tuple(topic for topic in topics if not allowed(self._claims, topic))
        self._restoring = [await self._follow(t) for t in topics if t not in self._dropped]

    async def start_restored(self) -> None:
        """After the `welcome`: each restored topic's snapshot again, then its events; a
        dropped topic is named in an error, and the session's record forgets it."""
        for topic in self._dropped:
            await self._send(
                Error(
                    code=ErrorCode.FORBIDDEN_TOPIC,
                    message=f"subscription to {topic} dropped: the token no longer allows it",
                )
            )
        if self._dropped:
            await self._recorded(tuple(self._members), None)
        for member in self._restoring:
            member.start(None)
        self._restoring, self._dropped = [], ()

    async def leave_all(self) -> None:
        # Taken out first: a member failing meanwhile (`_failed`, from its own task) finds
        # itself gone already, and is left here like the others.
        members, self._members = list(self._members.values()), {}
        for member in members:
            await self._hub.leave(member)
        await self._leaving.finish()  # failed members still leaving their feed

    def _refusal(self, topic: str) -> tuple[ErrorCode, str] | None:
        try:
            topic_name(topic)
        except BadTopicError as exc:
            return ErrorCode.BAD_FRAME, str(exc)
        if not allowed(self._claims, topic):
            return ErrorCode.FORBIDDEN_TOPIC, f"the token's topics claim does not allow {topic}"
        if topic not in self._members and len(self._members) >= self._max_topics:
            return ErrorCode.TOO_MANY_TOPICS, f"a session holds at most {self._max_topics} topics"
        return None

    async def _follow(self, topic: str) -> TopicMember:
        member = TopicMember(
            topic,
            self._hub.store,
            self._send,
            buffer=self._buffer,
            on_overflow=self._on_overflow,
            on_failed=self._failed,
        )
        self._members[topic] = member
        await self._hub.join(member)
        return member

    def _failed(self, member: TopicMember) -> None:
        """The store did not serve a subscription: drop it, so a new `subscribe` starts
        afresh (the session's record keeps it for a resume)."""
        if self._members.get(member.topic) is member:
            del self._members[member.topic]
            self._leaving.spawn(self._hub.leave(member))

    async def _recorded(self, topics: tuple[str, ...], ref: str | None) -> bool:
        """Write the session's subscriptions (restored on a resume); `False` when the bus
        could not confirm it (the client is told `unavailable`)."""
        try:
            await self._record(tuple(sorted(topics)))
        except RECORD_ERRORS as exc:
            _log.warning("topic.not_recorded", error=str(exc) or type(exc).__name__)
            await self._send(
                Error(
                    ref=ref,
                    code=ErrorCode.UNAVAILABLE,
                    message="the subscription could not be recorded; try again",
                )
            )
            return False
        return True
