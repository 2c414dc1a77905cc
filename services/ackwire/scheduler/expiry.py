"""Messages no client acked within the retention: their producer hears `expired`.

The sweeper reads the oldest messages of `ACKWIRE_SESSIONS` (the store keeps
them in the order they were stored, so it stops at the first one young
enough), issues an `expired` receipt for each that asked for one, logs it,
and removes it. The stream's own max age is a little longer than the
retention: a safety net that drops what no sweeper got to, silently.
Several schedulers may sweep at once; receipts are deduped by the store and
a second removal of a message is not an error.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge

from ackwire.bus import subjects
from ackwire.bus.receipts import Receipts
from ackwire.bus.session_queue import SessionQueue, Stored
from ackwire.errors import BusError
from ackwire.sessions.overview import session_count

_log = structlog.get_logger("ackwire.scheduler")

OWED = Gauge("ackwire_messages_owed", "Messages stored for sessions and not yet acked")
OLDEST_OWED = Gauge(
    "ackwire_oldest_owed_seconds", "How long ago the oldest message still owed was stored"
)
SESSIONS = Gauge(
    "ackwire_sessions",
    "Sessions on record: live (a connection holds it now) or detached (waiting for a resume)",
    ["state"],
)
EXPIRED = Counter(
    "ackwire_messages_expired_total",
    "Messages removed unacked because their retention ran out, counted by the sweeper that"
    " decided it, by kind",
    ["kind"],
)

_READ_BATCH = 256


class ExpirySweeper:
    def __init__(
        self,
        queue: SessionQueue,
        receipts: Receipts,
        js: JetStreamContext,
        *,
        retention_s: float,
        every_s: float,
    ) -> None:
        self._queue = queue
        self._receipts = receipts
        self._js = js
        self._retention = timedelta(seconds=retention_s)
        # Often enough that nothing outlives its retention by much.
        self.every_s = min(every_s, retention_s / 4)

    async def sweep(self) -> int:
        """Expire every message older than the retention; how many were. Then say how many
        are owed, how old the oldest is, and how many sessions are live and detached
        (`ackwire_messages_owed`, `ackwire_oldest_owed_seconds`, `ackwire_sessions`)."""
        expired, oldest = await self._expire()
        owed = await self._queue.owed()
        OWED.set(owed)
        OLDEST_OWED.set(0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds())
        sessions = await session_count(self._js)
        SESSIONS.labels(state="live").set(sessions.live)
        SESSIONS.labels(state="detached").set(sessions.detached)
        # What a scrape shows from now on (tests wait for it).
        _log.debug(
            "expiry.swept",
            expired=expired,
            owed=owed,
            live=sessions.live,
            detached=sessions.detached,
        )
        return expired

    async def _expire(self) -> tuple[int, datetime | None]:
        """How many expired, and when the oldest message left was stored."""
        cutoff = datetime.now(UTC) - self._retention
        expired = 0
        after = 0
        while True:
            read = await self._queue.read_subject(
                subjects.SESSION_SUBJECTS, after=after, limit=_READ_BATCH
            )
            for stored in read.messages:
                if stored.delivery.created_at > cutoff:  # stored in order: the rest is younger
                    return expired, stored.delivery.created_at
                expired += await self._expire_one(stored)
            if read.complete or not read.messages:
                return expired, None
            after = read.messages[-1].seq

    async def _expire_one(self, stored: Stored) -> bool:
        """Tell its producer, remove it, and count it if it was expired here. Each message
        is counted once, as delivered or expired, by whoever decided: the first receipt
        stored decides for a message that asked for one (the sweeper tells first, so that a
        failed removal does not lose the count), else the removal that took it (an ack's,
        or another sweeper's, may have come first)."""
        delivery = stored.delivery
        receipted = delivery.receipt_to is not None
        told_first = (
            receipted and (await self._receipts.issue(delivery, stored.seq, "expired")).first
        )
        if told_first:
            _expired(stored)
        gone = await self._queue.confirm(delivery.session_id, upto=None, singles=(stored.seq,))
        removed_here = not receipted and stored.seq not in gone
        if removed_here:
            _expired(stored)
        return told_first or removed_here

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except BusError as exc:
                _log.warning("expiry.sweep_failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(self.every_s)


def _expired(stored: Stored) -> None:
    delivery = stored.delivery
    EXPIRED.labels(kind=delivery.kind).inc()
    _log.warning(
        "delivery.expired_undelivered",
        id=delivery.id,
        session_id=delivery.session_id,
        user=delivery.user,
        job_id=delivery.job_id,
        seq=stored.seq,
    )
