"""Presence changes, published as topics: `presence.<user>` and `presence.gateways`.

A session *joins* when a connection of this gateway holds it (a new session, a
resume, a takeover: the session moved here) and *leaves* when that connection
ends without another taking the session over. A gateway that dies cannot say
its sessions left; the gateways that see its lease lapse say so once for all of
them, on `presence.gateways`. The durable truth is the session records and
leases (`Publisher.presence`); these events tell a watcher when to look. They
are published without waiting for the store's answer (a round trip less in
every handshake): a change announced while NATS is out of reach is lost, never
the truth it points to.
"""

from __future__ import annotations

import structlog

from ackwire.bus import subjects
from ackwire.bus.models import GatewayRecord, PresenceChange
from ackwire.bus.retry import retried
from ackwire.bus.topics import TopicStore
from ackwire.errors import BusError
from ackwire.lifecycle import BackgroundTasks

_log = structlog.get_logger("ackwire.gateway")

_GONE_RETRY_S = 60.0


class PresenceNotices:
    def __init__(self, store: TopicStore, gateway: str) -> None:
        self._store = store
        self._gateway = gateway
        self._announcing = BackgroundTasks()

    async def joined(self, user: str, session_id: str) -> None:
        await self._publish(
            subjects.presence_topic(user),
            PresenceChange(change="join", gateway=self._gateway, user=user, session_id=session_id),
        )

    async def left(self, user: str, session_id: str) -> None:
        await self._publish(
            subjects.presence_topic(user),
            PresenceChange(change="leave", gateway=self._gateway, user=user, session_id=session_id),
        )

    def gateway_expired(self, gone: GatewayRecord) -> None:
        """Another gateway's lease lapsed. Every gateway that saw it says so; the store
        keeps one (the event id names the gateway incarnation). Rare, and it stands for
        every session that gateway held: published with the store's answer awaited, and
        retried while a cluster elects leaders (a gateway's death may come with a
        server's)."""
        self._announcing.spawn(self._announce_gone(gone))

    async def _announce_gone(self, gone: GatewayRecord) -> None:
        change = PresenceChange(change="gateway_gone", gateway=gone.name)
        try:
            await retried(
                lambda: self._store.publish(
                    subjects.GATEWAYS_GONE_TOPIC,
                    change.model_dump(mode="json"),
                    event_id=f"gone-{gone.name}-{gone.incarnation}",
                ),
                attempts=None,
                within_s=_GONE_RETRY_S,
            )
        except BusError as exc:
            _log.warning("presence.not_published", gateway_gone=gone.name, error=str(exc))

    async def stop(self) -> None:
        await self._announcing.cancel()

    async def _publish(self, topic: str, change: PresenceChange) -> None:
        try:
            await self._store.announce(topic, change.model_dump(mode="json"))
        except BusError as exc:  # presence is advisory; the records are the truth
            _log.warning(
                "presence.not_published", topic=topic, error=str(exc) or type(exc).__name__
            )
