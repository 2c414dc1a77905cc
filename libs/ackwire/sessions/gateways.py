"""Which gateways are alive: the leases that make presence trustworthy.

A live session record names the gateway incarnation holding it. It counts as
connected only while that incarnation's lease is alive, so a gateway killed
without goodbye stops counting as holding anything within three heartbeats,
with no per-session write; and a gateway restarted under the same name is a
new incarnation, so it never revives the sessions its predecessor held.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.js.kv import KeyValue

from ackwire.bus.bucket_view import BucketView
from ackwire.bus.models import GatewayRecord
from ackwire.sessions.record import SessionRecord, SessionState


class GatewayDirectory:
    def __init__(self, on_expired: Callable[[GatewayRecord], None] = lambda _gw: None) -> None:
        """`on_expired`: a gateway's lease lapsed (it died without goodbye)."""
        self._view = BucketView(GatewayRecord, what="gateway", on_expired=on_expired)

    @property
    def gateways(self) -> dict[str, GatewayRecord]:
        return dict(self._view.entries)

    def alive(self, gateway: str, incarnation: str) -> bool:
        lease = self._view.entries.get(gateway)
        return lease is not None and lease.incarnation == incarnation

    def connected(self, record: SessionRecord) -> bool:
        """Whether a connection holds the session now."""
        return record.state is SessionState.LIVE and self.alive(record.gateway, record.incarnation)

    async def follow(self, kv: KeyValue) -> None:
        await self._view.follow(kv)

    async def stop(self) -> None:
        await self._view.stop()
