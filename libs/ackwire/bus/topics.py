"""Topics on the bus: events in one stream (a subject per topic), snapshots in KV.

An event's stream sequence is its `seq`. Publishing an event as the topic's
snapshot also writes `{seq, data}` to the snapshots bucket, by compare-and-set,
and only if it is newer than the snapshot there: two publishers racing never
leave the older one in place. A subscriber reads the snapshot, then the events
after its `seq` from the store, then follows the live subject: no overlap, and
no gap it is not told of (`ackwire.wire.cursor`).

The stream keeps the last `ACKWIRE_TOPIC_EVENTS_KEPT` events of each topic (1,000
by default), and events no older than `ACKWIRE_RETENTION_S`: what bridges a
snapshot and the live feed. It forgets the oldest first (of a topic past its
count; of the stream past the age), which is what lets a read tell whether
anything between two events was forgotten. Events are fan-out, not owed:
nothing acks them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import JsonValue, ValidationError

from ackwire.bus import subjects
from ackwire.bus.boundary import translated
from ackwire.bus.connect import Overflows
from ackwire.bus.direct_get import read_batch
from ackwire.bus.models import TopicEventBody, TopicSnapshot
from ackwire.errors import BusError

_SNAPSHOT_CAS_ATTEMPTS = 5

_log = structlog.get_logger("ackwire.bus")


@dataclass(frozen=True, slots=True)
class TopicEvent:
    topic: str
    seq: int
    previous: int | None
    """The topic's event before this one; `None` when not known: the store held none of
    the topic's events before it (the topic's first, or the others were forgotten)."""
    data: JsonValue


class TopicStoreError(BusError):
    """The store did not answer in time, or a snapshot kept changing under a write."""


class TopicStore:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        snapshots: KeyValue,
        overflows: Overflows | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._snapshots = snapshots
        self._overflows = overflows or Overflows()

    @classmethod
    async def open(cls, nc: Client, overflows: Overflows | None = None) -> TopicStore:
        js = nc.jetstream()
        return cls(nc, js, await js.key_value(subjects.SNAPSHOTS_BUCKET), overflows)

    @translated("publishing a topic event")
    async def publish(
        self, topic: str, data: JsonValue, *, snapshot: bool = False, event_id: str | None = None
    ) -> int:
        """Store an event (and, with `snapshot`, make it the topic's snapshot); its seq.

        `event_id` makes a retried publish store the event once."""
        body = TopicEventBody(data=data)
        ack = await self._js.publish(
            subjects.topic_subject(topic),
            body.to_bytes(),
            headers={"Nats-Msg-Id": event_id} if event_id else None,
        )
        if snapshot:
            await self._keep_newer_snapshot(
                topic, TopicSnapshot(seq=ack.seq, data=data, published_at=body.published_at)
            )
        return ack.seq

    @translated("announcing a topic event")
    async def announce(self, topic: str, data: JsonValue) -> None:
        """Publish an advisory event without waiting for the store's answer: the stream
        stores it all the same, unless no server can (then it is lost)."""
        await self._nc.publish(subjects.topic_subject(topic), TopicEventBody(data=data).to_bytes())

    @translated("reading a topic's snapshot")
    async def snapshot(self, topic: str) -> TopicSnapshot | None:
        try:
            entry = await self._snapshots.get(subjects.snapshot_key(topic))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return TopicSnapshot.model_validate_json(entry.value)
        except ValidationError as exc:
            _log.error("topic.unreadable_snapshot", topic=topic, error=str(exc))
            return None

    @translated("asking where a topic stands")
    async def latest_seq(self, topic: str) -> int:
        """Where `topic` stands now: the seq of its last stored event or, if the store
        holds none, the stream's last seq. Every later event of it is newer."""
        try:
            last = await self._js.get_msg(
                subjects.TOPICS_STREAM, subject=subjects.topic_subject(topic), direct=True
            )
        except NotFoundError:
            return (await self._js.stream_info(subjects.TOPICS_STREAM)).state.last_seq
        return last.seq or 0

    @translated("reading a topic")
    async def read(self, topic: str, *, after: int, limit: int) -> tuple[list[TopicEvent], bool]:
        """Up to `limit` stored events of `topic` after `after`, in order; and whether the
        read reached the newest. Each event's `previous` is the one before it in the
        read; the first's is `after` when the store shows that it forgot nothing of
        the topic between them, else `None` (events may be lost there)."""
        subject = subjects.topic_subject(topic)
        try:
            # From `after` itself: if the store still holds it, it forgot nothing after it.
            batch = await read_batch(
                self._nc,
                subjects.TOPICS_STREAM,
                subject,
                after=max(after - 1, 0),
                limit=limit + 1,
            )
        except TimeoutError as exc:
            raise TopicStoreError(f"reading topic {topic} timed out") from exc
        stored = [event for msg in batch.messages if (event := _event(topic, msg)) is not None]
        if stored and stored[0].seq == after:
            stored, previous = stored[1:], after
        elif stored and await self._kept_everything_after(subject, after):
            previous = after
        else:
            previous = None
        complete = batch.complete and len(stored) <= limit
        events: list[TopicEvent] = []
        for event in stored[:limit]:
            events.append(TopicEvent(topic, event.seq, previous, event.data))
            previous = event.seq
        return events, complete

    async def _kept_everything_after(self, subject: str, after: int) -> bool:
        """Whether the store forgot none of the subject's events after `after`, though it
        does not hold `after` (an event of another topic, or one forgotten). It forgets
        by age from the stream's start, and a topic's events past its count oldest
        first: so it did not if nothing after `after` aged out and the topic holds
        fewer events than it may (a topic at its count may have lost any before its
        oldest held)."""
        info = await self._js.stream_info(subjects.TOPICS_STREAM, subjects_filter=subject)
        held = (info.state.subjects or {}).get(subject, 0)
        most = info.config.max_msgs_per_subject
        return info.state.first_seq <= after + 1 and (most is None or most < 0 or held < most)

    @translated("following a topic")
    async def follow(
        self,
        topic: str,
        on_event: Callable[[TopicEvent], Awaitable[None]],
        *,
        pending_limit: int,
        on_dropped: Callable[[], None] = lambda: None,
    ) -> Subscription:
        """Receive the topic's events as they are stored (past `pending_limit` unread,
        NATS drops them, and `on_dropped` is told)."""

        async def receive(msg: Msg) -> None:
            event = _event(topic, msg, live=True)
            if event is not None:
                await on_event(event)

        subscription = await self._nc.subscribe(
            subjects.live_topic_subject(topic), cb=receive, pending_msgs_limit=pending_limit
        )
        self._overflows.watch(subscription, on_dropped)
        return subscription

    def unwatch(self, subscription: Subscription) -> None:
        self._overflows.forget(subscription)

    async def _keep_newer_snapshot(self, topic: str, snapshot: TopicSnapshot) -> None:
        key = subjects.snapshot_key(topic)
        for _ in range(_SNAPSHOT_CAS_ATTEMPTS):
            try:
                entry = await self._snapshots.get(key)
            except KeyNotFoundError:
                entry = None
            try:
                if entry is None or not entry.value:
                    await self._snapshots.create(key, snapshot.to_bytes())
                    return
                if TopicSnapshot.model_validate_json(entry.value).seq >= snapshot.seq:
                    return  # a newer snapshot is there already
                await self._snapshots.update(key, snapshot.to_bytes(), last=entry.revision)
            except KeyWrongLastSequenceError:
                await asyncio.sleep(0)  # someone wrote it meanwhile: look again
                continue
            return
        raise TopicStoreError(f"the snapshot of {topic} kept changing")


def _event(topic: str, msg: Msg, *, live: bool = False) -> TopicEvent | None:
    """The event a message holds. A live one's `previous` is in its headers (0: the store
    held none of the topic's events when it stored it); a stored one's is the read's."""
    headers = msg.headers or {}
    try:
        seq = int(headers["Nats-Sequence"])
        previous = int(headers.get("Nats-Last-Sequence", "0")) if live else 0
        body = TopicEventBody.model_validate_json(msg.data)
    except (KeyError, ValueError, ValidationError) as exc:
        _log.error("topic.unreadable_event", topic=topic, error=str(exc))
        return None
    return TopicEvent(topic, seq, previous or None, body.data)
