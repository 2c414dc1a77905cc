"""Topics on the bus: events in one stream (a subject per topic), snapshots in KV.

An event's stream sequence is its `seq`. Publishing an event as the topic's
snapshot also writes `{seq, data}` to the snapshots bucket, by compare-and-set,
and only if it is newer than the snapshot there: two publishers racing never
leave the older one in place. A subscriber reads the snapshot, then the events
after its `seq` from the store, then follows the live subject: no gap, no
overlap (`ackwire.wire.cursor`).

The stream keeps the last `ACKWIRE_TOPIC_EVENTS_KEPT` events of each topic (1,000
by default): what bridges a snapshot and the live feed. Events are fan-out, not
owed: nothing acks them.
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
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import JsonValue, ValidationError

from ackwire.bus import subjects
from ackwire.bus.direct_get import read_batch
from ackwire.bus.models import TopicEventBody, TopicSnapshot

_SNAPSHOT_CAS_ATTEMPTS = 5

_log = structlog.get_logger("ackwire.bus")


@dataclass(frozen=True, slots=True)
class TopicEvent:
    topic: str
    seq: int
    previous: int
    """The topic's event before this one (0: none known)."""
    data: JsonValue


class TopicStoreError(Exception):
    """The store did not answer in time."""


class TopicStore:
    def __init__(self, nc: Client, js: JetStreamContext, snapshots: KeyValue) -> None:
        self._nc = nc
        self._js = js
        self._snapshots = snapshots

    @classmethod
    async def open(cls, nc: Client) -> TopicStore:
        js = nc.jetstream()
        return cls(nc, js, await js.key_value(subjects.SNAPSHOTS_BUCKET))

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

    async def announce(self, topic: str, data: JsonValue) -> None:
        """Publish an advisory event without waiting for the store's answer: the stream
        stores it all the same, unless no server can (then it is lost)."""
        await self._nc.publish(subjects.topic_subject(topic), TopicEventBody(data=data).to_bytes())

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

    async def read(self, topic: str, *, after: int, limit: int) -> tuple[list[TopicEvent], bool]:
        """Up to `limit` stored events of `topic` after `after`, in order; and whether the
        read reached the newest."""
        try:
            batch = await read_batch(
                self._nc,
                subjects.TOPICS_STREAM,
                subjects.topic_subject(topic),
                after=after,
                limit=limit,
            )
        except TimeoutError as exc:
            raise TopicStoreError(f"reading topic {topic} timed out") from exc
        events: list[TopicEvent] = []
        for msg in batch.messages:
            event = _event(topic, msg, previous=events[-1].seq if events else after)
            if event is not None:
                events.append(event)
        return events, batch.complete

    async def follow(
        self,
        topic: str,
        on_event: Callable[[TopicEvent], Awaitable[None]],
        *,
        pending_limit: int,
    ) -> Subscription:
        """Receive the topic's events as they are stored (past `pending_limit` unread,
        NATS drops them; the chain of `previous` shows the gap)."""

        async def receive(msg: Msg) -> None:
            event = _event(topic, msg)
            if event is not None:
                await on_event(event)

        return await self._nc.subscribe(
            subjects.live_topic_subject(topic), cb=receive, pending_msgs_limit=pending_limit
        )

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


def _event(topic: str, msg: Msg, previous: int | None = None) -> TopicEvent | None:
    headers = msg.headers or {}
    try:
        seq = int(headers["Nats-Sequence"])
        before = int(headers.get("Nats-Last-Sequence", "0")) if previous is None else previous
        body = TopicEventBody.model_validate_json(msg.data)
    except (KeyError, ValueError, ValidationError) as exc:
        _log.error("topic.unreadable_event", topic=topic, error=str(exc))
        return None
    return TopicEvent(topic, seq, before, body.data)
