"""The publisher API: how a backend service reaches users through ackwire.

    publisher = await Publisher.connect("nats://127.0.0.1:4222")
    seq = await publisher.publish("pipeline.42", {"percent": 40}, snapshot=True)
    sent = await publisher.send({"text": "hi"}, user="alice")
    receipt = await publisher.receipt(sent.id)   # once alice's client acked it
    await publisher.close()

Topic events are fan-out (not acked; a subscriber gets the latest snapshot,
then every later event). Messages are owed: stored in each addressed
session's queue and delivered under the same ack rules as job results, with
the returned id as the `deliver` frame's `id`. A FastStream app passes its
broker's NATS connection: `Publisher(broker.connection)` once the broker
is connected (see docs/backends.md).

Neither may be larger than clients accept: a message or event whose frame
would exceed `max_frame_bytes` (the gateways' `ACKWIRE_MAX_FRAME_BYTES`) is
refused with `FrameTooLargeError`, and nothing is stored.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import JsonValue

from ackwire.bus import subjects
from ackwire.bus.boundary import translated
from ackwire.bus.connect import connect_nats
from ackwire.bus.following import Following
from ackwire.bus.models import Delivery, PresenceChange, Receipt, TopicEventBody
from ackwire.bus.receipts import Receipts
from ackwire.bus.session_queue import SessionQueue
from ackwire.bus.subjects import message_token, service_token, session_token
from ackwire.bus.topics import TopicStore
from ackwire.sessions.overview import UserPresence, user_presence
from ackwire.sessions.record import addressable
from ackwire.sessions.table import SessionTable
from ackwire.sessions.users import UserSessions
from ackwire.settings import Settings
from ackwire.wire.bounds import FrameTooLargeError, refuse_oversized_deliver, refuse_oversized_event
from ackwire.wire.topics import topic_name


class NoRecipientError(LookupError):
    """Nobody to send to: the user has no live or resumable session, or the session is
    unknown, expired or ended."""


@dataclass(frozen=True, slots=True)
class Sent:
    id: str
    """The message's id: the `id` of its `deliver` frame in every session."""
    sessions: tuple[str, ...]
    """The sessions it was stored for."""


@dataclass(frozen=True, slots=True)
class _Stores:
    topics: TopicStore
    table: SessionTable
    users: UserSessions


class Publisher:
    def __init__(
        self, nc: Client, *, producer: str = "publisher", max_frame_bytes: int | None = None
    ) -> None:
        """`producer` names this service in receipts: `receipts()` follows its own.
        `max_frame_bytes` is the gateways' limit (default: `ACKWIRE_MAX_FRAME_BYTES`)."""
        self._nc = nc
        self._max_frame_bytes = (
            Settings().max_frame_bytes if max_frame_bytes is None else max_frame_bytes
        )
        self._producer = service_token(producer)
        self._receipts = Receipts(nc)
        self._queue = SessionQueue(nc, nc.jetstream())
        self._stores: _Stores | None = None
        self._owns_connection = False

    @classmethod
    async def connect(
        cls,
        servers: str | list[str],
        *,
        producer: str = "publisher",
        max_frame_bytes: int | None = None,
    ) -> Publisher:
        """A publisher on a connection of its own (closed by `close`)."""
        urls = [url.strip() for url in servers.split(",")] if isinstance(servers, str) else servers
        publisher = cls(
            await connect_nats(urls, name=f"ackwire-{producer}"),
            producer=producer,
            max_frame_bytes=max_frame_bytes,
        )
        publisher._owns_connection = True
        return publisher

    @translated("closing the publisher")
    async def close(self) -> None:
        if self._owns_connection:
            await self._nc.drain()

    @translated("publishing")
    async def publish(
        self, topic: str, data: JsonValue, *, snapshot: bool = False, event_id: str | None = None
    ) -> int:
        """Publish an event to `topic`; with `snapshot`, it also becomes the topic's
        snapshot, sent first to every later subscriber. Returns the event's `seq` once
        stored. `event_id` makes a retried publish store the event once. Raises
        `FrameTooLargeError` when its `event` frame would exceed `max_frame_bytes`."""
        name = topic_name(topic)
        refuse_oversized_event(self._max_frame_bytes, topic=name, data=data)
        stores = await self._opened()
        return await stores.topics.publish(name, data, snapshot=snapshot, event_id=event_id)

    @translated("sending")
    async def send(
        self,
        data: JsonValue,
        *,
        user: str | None = None,
        session: str | None = None,
        message_id: str | None = None,
    ) -> Sent:
        """Store a message (kind `message`) for every live or resumable session of `user`,
        or for one `session`; returns once every copy is stored. Raises
        `NoRecipientError` when there is nobody to store it for, `FrameTooLargeError`
        when its `deliver` frame would exceed `max_frame_bytes`. A retry with the same
        `message_id` (within two minutes) stores it once."""
        message_id = message_token(message_id or "m-" + secrets.token_urlsafe(16))
        refuse_oversized_deliver(
            self._max_frame_bytes, delivery_id=message_id, kind="message", data=data
        )
        stores = await self._opened()
        if session is not None and user is None:
            candidates = [session_token(session)]
        elif user is not None and session is None:
            candidates = await stores.users.of(user)
        else:
            raise ValueError("send to exactly one of a user and a session")
        # The lookups, then the copies, side by side: one confirmation each, no copy
        # waiting for another's (a retry after a partial failure stores each once).
        lookups = await asyncio.gather(*(stores.table.lookup(s) for s in candidates))
        recipients = [
            (session_id, found.record.user)
            for session_id, found in zip(candidates, lookups, strict=True)
            if addressable(found) and (user is None or found.record.user == user)
        ]
        if not recipients:
            who = f"user {user}" if user is not None else f"session {session}"
            raise NoRecipientError(f"{who} has no live or resumable session")
        await asyncio.gather(
            *(
                self._queue.put(
                    Delivery(
                        id=message_id,
                        kind="message",
                        session_id=session_id,
                        user=owner,
                        receipt_to=self._producer,
                        data=data,
                    )
                )
                for session_id, owner in recipients
            )
        )
        return Sent(message_id, tuple(session_id for session_id, _ in recipients))

    async def _opened(self) -> _Stores:
        """The buckets this publisher uses, looked up once (each lookup asks the server)."""
        if self._stores is None:
            js = self._nc.jetstream()
            self._stores = _Stores(
                topics=await TopicStore.open(self._nc),
                table=await SessionTable.open(js),
                users=await UserSessions.open(js),
            )
        return self._stores

    @translated("awaiting a receipt")
    async def receipt(self, message_id: str) -> Receipt:
        """The first receipt of a message sent by this producer: `delivered` once a client
        acked it and the store confirmed, `expired` if its retention ended first. Waits
        as long as it takes: bound it (`async with asyncio.timeout(…)`)."""
        return await self._receipts.first(self._producer, message_id)

    @translated("following receipts")
    async def receipts(self) -> Following[Receipt]:
        """Every receipt of this producer's messages stored from the return on:
        `async for receipt in following`, then `await following.close()`."""
        return await self._receipts.follow(self._producer)

    @translated("reading presence")
    async def presence(self, user: str) -> UserPresence:
        """Whether `user` is online now, and on which sessions."""
        return await user_presence(self._nc, user)

    @translated("following presence")
    async def presence_changes(self) -> Following[PresenceChange]:
        """Every presence change from the return on: sessions joining and leaving, and
        gateways gone without goodbye (all they held is offline). The same events that
        clients read on the topics `presence.<user>` and `presence.gateways`."""
        sub = await self._nc.subscribe(subjects.LIVE_PRESENCE_SUBJECTS)
        await self._nc.flush()  # following once this returns
        return Following(sub, _presence_change)


def _presence_change(msg: Msg) -> PresenceChange:
    return PresenceChange.model_validate(TopicEventBody.model_validate_json(msg.data).data)


__all__ = [
    "Following",
    "FrameTooLargeError",
    "NoRecipientError",
    "PresenceChange",
    "Publisher",
    "Receipt",
    "Sent",
    "UserPresence",
]
