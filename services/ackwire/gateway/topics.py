"""Topics at the gateway: one NATS subscription per topic, fanned out to its members.

A `TopicFeed` follows one topic's live subject for every connection of this
gateway subscribed to it. Each `TopicMember` (one connection's subscription)
has its own bounded inbox and its own task: it sends the snapshot, the stored
events after it, then the live ones, in order (`ackwire.wire.cursor`). Events
the store no longer holds are never skipped silently: the client gets a
`topic_gap` error naming them, then the topic's snapshot if that covers them.
The feed only puts events into inboxes, never waits: a slow or dead member can
not delay the others. Each live event is encoded once, for every member.

A burst is not a slow client: a member whose inbox is full drops what the feed
offers (the store has it) and catches up from the store once it has sent what
it holds, in order, with no gap. A client is too slow (closed 4429, the session
stays resumable) only when its socket accepts nothing for `send_stall_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from nats.aio.subscription import Subscription
from websockets.exceptions import ConnectionClosed

from ackwire.bus.boundary import bus_errors
from ackwire.bus.models import TopicSnapshot
from ackwire.bus.topics import TopicEvent, TopicStore
from ackwire.errors import BusError
from ackwire.lifecycle import BackgroundTasks, cancel_and_wait
from ackwire.wire import encode
from ackwire.wire.codes import ErrorCode
from ackwire.wire.cursor import Drop, Emit, Gap, ReadFirst, TopicCursor
from ackwire.wire.frames import (
    Error,
    Event,
    Frame,
    Subscribe,
    Subscribed,
    TopicGap,
    Unsubscribe,
    Unsubscribed,
)
from ackwire.wire.guard import TopicAdmission

_log = structlog.get_logger("ackwire.gateway")

_READ_BATCH = 256

SendFrame = Callable[[Frame | str], Awaitable[None]]
"""Send a frame to the client; a `str` is a frame encoded already."""


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """A live event as the feed hands it to every member, with its `event` frame encoded
    once for all of them."""

    event: TopicEvent
    frame: str

    @classmethod
    def of(cls, event: TopicEvent) -> LiveEvent:
        return cls(event, encode(Event(topic=event.topic, seq=event.seq, data=event.data)))


class TopicMember:
    """One connection's subscription to one topic."""

    def __init__(
        self,
        topic: str,
        store: TopicStore,
        send: SendFrame,
        *,
        buffer: int,
        send_stall_s: float,
        on_overflow: Callable[[], None],
        on_failed: Callable[[TopicMember], None],
    ) -> None:
        self.topic = topic
        self._store = store
        self._send = send
        self._buffer = buffer
        self._inbox: deque[LiveEvent] = deque()
        self._arrived = asyncio.Event()
        self._catch_up_due = False  # the feed offered more than the inbox holds, or NATS
        self._send_stall_s = send_stall_s
        self._on_overflow = on_overflow
        self._on_failed = on_failed
        self._task: asyncio.Task[None] | None = None
        self._located = asyncio.Event()
        self._released: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def offer(self, live: LiveEvent) -> None:
        """A live event, from the feed; never waits. Past the inbox's bound it is dropped
        (the store has it) and read again once the member has caught up."""
        if len(self._inbox) < self._buffer:
            self._inbox.append(live)
        else:
            self._catch_up_due = True
        self._arrived.set()

    def resync(self) -> None:
        """NATS came back (or dropped events on the way): events published meanwhile are
        read from the store."""
        self._catch_up_due = True
        self._arrived.set()

    def start(self) -> None:
        """Once in the feed: find where the client's events start (the snapshot, or where
        the topic stands now), then wait for `release`."""
        self._task = asyncio.create_task(self._run(), name=f"topic {self.topic}")

    async def located(self) -> None:
        """Once the start is known (or could not be read: `release` tells the client)."""
        await self._located.wait()

    def release(self, ref: str | None) -> None:
        """Send: `subscribed` (answering the `subscribe` of `ref`; none for a restore), the
        snapshot, then the events."""
        self._released.set_result(ref)

    async def stop(self) -> None:
        """End the task. An exception it died of (a bug) is logged here, never raised into
        the clean-up of its connection, which has other members to end."""
        try:
            await cancel_and_wait(self._task)
        except Exception:
            _log.exception("topic.member_crashed", topic=self.topic)

    async def _run(self) -> None:
        try:
            try:
                snapshot = await self._store.snapshot(self.topic)
                # Read once the feed is followed, and before `subscribed` or a restore's
                # `welcome`: without a snapshot, every event after where the topic stands
                # now is the client's.
                start = (
                    snapshot.seq
                    if snapshot is not None
                    else await self._store.latest_seq(self.topic)
                )
            finally:
                self._located.set()
            cursor = TopicCursor(start)
            ref = await self._released
            if ref is not None:
                await self._send(Subscribed(ref=ref, topic=self.topic))
            if snapshot is not None:
                await self._send_snapshot(snapshot)
                await self._catch_up(cursor, until=None)
            while True:
                await self._arrived.wait()
                self._arrived.clear()
                while self._inbox:
                    live = self._inbox.popleft()
                    await self._offer(cursor, live.event, stored=False, frame=live.frame)
                if self._catch_up_due:
                    self._catch_up_due = False
                    await self._catch_up(cursor, until=None)
        except ConnectionClosed:
            pass  # the connection is over; it leaves every topic on its way out
        except TimeoutError:  # the socket accepted nothing for `send_stall_s`
            self._on_overflow()
        except BusError as exc:
            _log.warning("topic.unreadable", topic=self.topic, error=str(exc) or type(exc).__name__)
            with contextlib.suppress(ConnectionClosed):
                await self._send(
                    Error(
                        ref=await self._released,
                        code=ErrorCode.UNAVAILABLE,
                        message=f"topic {self.topic} could not be read; subscribe again",
                        topic=self.topic,
                    )
                )
            self._on_failed(self)  # no longer subscribed: its connection lets it go

    async def _offer(
        self, cursor: TopicCursor, event: TopicEvent, *, stored: bool, frame: str | None = None
    ) -> None:
        """Send `event` if it is the client's next, after what the cursor asks for first.
        `frame` is its `event` frame, when encoded already."""
        while True:
            verdict = cursor.offer(event.seq, event.previous, stored=stored)
            if isinstance(verdict, Emit):
                await self._emit(frame or Event(topic=self.topic, seq=event.seq, data=event.data))
                return
            if isinstance(verdict, Drop):
                return
            if isinstance(verdict, ReadFirst):  # live events were lost on the way: read them
                await self._catch_up(cursor, until=event.seq)
            else:
                await self._tell_gap(cursor, verdict)

    async def _catch_up(self, cursor: TopicCursor, *, until: int | None) -> None:
        """Send the stored events after the cursor (up to and including `until`, if given:
        the store's copy of a live event says best what came before it)."""
        while True:
            events, complete = await self._store.read(
                self.topic, after=cursor.position, limit=_READ_BATCH
            )
            for event in events:
                if until is not None and event.seq > until:
                    return
                await self._offer(cursor, event, stored=True)
            if complete or not events:
                return

    async def _tell_gap(self, cursor: TopicCursor, gap: Gap) -> None:
        """Tell the client which events it lost; then, if the topic's snapshot covers them
        all, send it again: the client's state is whole again."""
        _log.warning("topic.gap", topic=self.topic, after=gap.after, before=gap.before)
        await self._send(
            Error(
                code=ErrorCode.TOPIC_GAP,
                topic=self.topic,
                gap=TopicGap(after=gap.after, before=gap.before),
                message=(
                    f"events of {self.topic} after seq {gap.after} and before {gap.before} "
                    "are no longer stored: some may be lost"
                ),
            )
        )
        snapshot = await self._store.snapshot(self.topic)
        if snapshot is not None and snapshot.seq >= cursor.position:
            await self._send_snapshot(snapshot)
            cursor.restore(snapshot.seq)

    async def _send_snapshot(self, snapshot: TopicSnapshot) -> None:
        await self._emit(
            Event(topic=self.topic, seq=snapshot.seq, data=snapshot.data, snapshot=True)
        )

    async def _emit(self, frame: Frame | str) -> None:
        # A socket that takes nothing for this long is a client too slow, not a burst.
        async with asyncio.timeout(self._send_stall_s):
            await self._send(frame)


class TopicFeed:
    """One topic's live events at this gateway, for every member."""

    def __init__(self) -> None:
        self.members: set[TopicMember] = set()
        self.subscription: Subscription | None = None

    async def deliver(self, event: TopicEvent) -> None:
        live = LiveEvent.of(event)
        for member in list(self.members):
            member.offer(live)

    def resync(self) -> None:
        """Events may be lost on the way: every member reads them from the store."""
        for member in list(self.members):
            member.resync()


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
                    member.topic,
                    feed.deliver,
                    pending_limit=self._pending_limit,
                    on_dropped=feed.resync,
                )
                self._feeds[member.topic] = feed
            feed.members.add(member)

    def resync(self) -> None:
        """NATS came back: every member reads what it may have missed from the store."""
        for feed in self._feeds.values():
            feed.resync()

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
                    self._store.unwatch(feed.subscription)
                    try:
                        with bus_errors(f"unfollowing {member.topic}"):
                            await feed.subscription.unsubscribe()
                    except BusError as exc:
                        _log.debug("topic.unsubscribe_failed", error=str(exc))


RecordTopics = Callable[[tuple[str, ...]], Awaitable[None]]


def _now() -> float:
    return asyncio.get_running_loop().time()


class ConnectionTopics:
    """One connection's subscriptions: `subscribe`, `unsubscribe`, the restore after a
    resume, and leaving every topic when the connection ends."""

    def __init__(
        self,
        hub: TopicHub,
        send: SendFrame,
        *,
        admission: TopicAdmission,
        record: RecordTopics,
        buffer: int,
        send_stall_s: float,
        on_overflow: Callable[[], None],
    ) -> None:
        self._hub = hub
        self._send = send
        self._admission = admission
        self._record = record
        self._buffer = buffer
        self._send_stall_s = send_stall_s
        self._on_overflow = on_overflow
        self._members: dict[str, TopicMember] = {}
        self._restoring: list[TopicMember] = []
        self._dropped: tuple[str, ...] = ()
        self._leaving = BackgroundTasks()

    async def subscribe(self, frame: Subscribe) -> None:
        refusal = self._admission.subscribe(frame.topic, self._members, _now())
        if refusal is not None:
            await self._send(refusal.model_copy(update={"ref": frame.ref}))
            return
        if frame.topic in self._members:
            await self._send(Subscribed(ref=frame.ref, topic=frame.topic))
            return
        if await self._recorded((*self._members, frame.topic), frame):
            (await self._follow(frame.topic)).release(frame.ref)

    async def unsubscribe(self, frame: Unsubscribe) -> None:
        refusal = self._admission.unsubscribe(frame.topic, self._members, _now())
        if refusal is not None:
            await self._send(refusal.model_copy(update={"ref": frame.ref}))
            return
        member = self._members.pop(frame.topic, None)
        if member is not None:
            await self._hub.leave(member)
            if not await self._recorded(tuple(self._members), frame):
                return
        await self._send(Unsubscribed(ref=frame.ref, topic=frame.topic))

    async def follow_restored(self, topics: tuple[str, ...]) -> None:
        """Before a resumed `welcome`: follow the session's topics the token still allows,
        so no event published after the client has its `welcome` is missed."""
        self._dropped = tuple(topic for topic in topics if not self._admission.allows(topic))
        self._restoring = [await self._follow(t) for t in topics if t not in self._dropped]
        for member in self._restoring:
            await member.located()

    async def start_restored(self) -> None:
        """After the `welcome`: each restored topic's snapshot again, then its events; a
        dropped topic is named in an error, and the session's record forgets it."""
        for topic in self._dropped:
            await self._send(
                Error(
                    code=ErrorCode.FORBIDDEN_TOPIC,
                    message=f"subscription to {topic} dropped: the token no longer allows it",
                    topic=topic,
                )
            )
        if self._dropped:
            await self._recorded(tuple(self._members), None)
        for member in self._restoring:
            member.release(None)
        self._restoring, self._dropped = [], ()

    async def reclaim(self, claims: tuple[str, ...]) -> None:
        """A refreshed token's `topics` claim applies at once: a subscription it no longer
        allows ends, with an error naming the topic."""
        self._admission.reclaim(claims)
        dropped = [topic for topic in self._members if not self._admission.allows(topic)]
        for topic in dropped:
            await self._hub.leave(self._members.pop(topic))
            await self._send(
                Error(
                    code=ErrorCode.FORBIDDEN_TOPIC,
                    topic=topic,
                    message=f"subscription to {topic} ended: the new token does not allow it",
                )
            )
        if dropped:
            await self._recorded(tuple(self._members), None)

    async def leave_all(self) -> None:
        # Taken out first: a member failing meanwhile (`_failed`, from its own task) finds
        # itself gone already, and is left here like the others.
        members, self._members = list(self._members.values()), {}
        for member in members:
            await self._hub.leave(member)
        await self._leaving.finish()  # failed members still leaving their feed

    async def _follow(self, topic: str) -> TopicMember:
        member = TopicMember(
            topic,
            self._hub.store,
            self._send,
            buffer=self._buffer,
            send_stall_s=self._send_stall_s,
            on_overflow=self._on_overflow,
            on_failed=self._failed,
        )
        self._members[topic] = member
        await self._hub.join(member)
        member.start()
        return member

    def _failed(self, member: TopicMember) -> None:
        """The store did not serve a subscription: drop it, so a new `subscribe` starts
        afresh (the session's record keeps it for a resume)."""
        if self._members.get(member.topic) is member:
            del self._members[member.topic]
            self._leaving.spawn(self._hub.leave(member))

    async def _recorded(
        self, topics: tuple[str, ...], answering: Subscribe | Unsubscribe | None
    ) -> bool:
        """Write the session's subscriptions (restored on a resume); `False` when the bus
        could not confirm it (the client is told `unavailable`, answering the frame that
        changed them, if one did)."""
        try:
            await self._record(tuple(sorted(topics)))
        except BusError as exc:
            _log.warning("topic.not_recorded", error=str(exc) or type(exc).__name__)
            await self._send(
                Error(
                    ref=answering.ref if answering else None,
                    code=ErrorCode.UNAVAILABLE,
                    message="the subscription could not be recorded; try again",
                    topic=answering.topic if answering else None,
                )
            )
            return False
        return True
