"""Moving a session's owed messages to its client, and the client's acks back to the store.

`DeliveryWindow` (sans I/O) decides; the pump only carries out its actions:
it follows the session's live subject, reads the store, sends `deliver`
frames, and turns acks into confirmed removals from the store. A message is
logged and counted as delivered only after the store confirmed the removal
that the client's ack asked for, and every message such a removal took gets
its `delivery.delivered` line, its count and its receipt.

Reads and confirmations run beside the sends (one of each at a time, as the
window asks). A confirmation is never cancelled halfway: stopping the pump
stops the sends at once, and `finish` waits, bounded, for the acks already read
to be confirmed, so a client's `ack` followed by `bye` (or a close, a takeover,
a drain) is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from nats.aio.subscription import Subscription
from websockets.exceptions import ConnectionClosed

from ackwire.bus.models import Delivery
from ackwire.bus.receipts import Receipts
from ackwire.bus.retry import retried
from ackwire.bus.session_queue import SessionQueue, Stored
from ackwire.errors import BusError
from ackwire.gateway import metrics
from ackwire.lifecycle import BackgroundTasks, cancel_and_wait
from ackwire.tracing import span
from ackwire.wire.frames import Ack, Deliver
from ackwire.wire.window import ConfirmAcks, DeliveryWindow, FetchBacklog, Send

_log = structlog.get_logger("ackwire.gateway")

_RECEIPT_TIMEOUT_S = 5.0
#: A message this close to its retention may be expired by the sweeper at any moment:
#: it is removed on its own, so the store's answer tells whose removal took it.
_EXPIRY_MARGIN = timedelta(minutes=1)

SendFrame = Callable[[Deliver], Awaitable[None]]
Failed = Callable[[BaseException], None]

#: Confirmations still running when their connection stopped waiting (kept referenced).
_unfinished = BackgroundTasks()


class DeliveryPump:
    """One connection's deliveries: started after `welcome`, stopped when the connection ends."""

    def __init__(
        self,
        queue: SessionQueue,
        receipts: Receipts,
        session_id: str,
        send: SendFrame,
        *,
        window: int,
        ack_wait: float,
        retention_s: float,
        on_failed: Failed,
        seen_before: Callable[[int], bool] = lambda _seq: False,
    ) -> None:
        self._queue = queue
        self._receipts = receipts
        self._session_id = session_id
        self._send = send
        self._window: DeliveryWindow[Delivery] = DeliveryWindow(size=window, ack_wait=ack_wait)
        self._batch = self._window.max_unsent // 2
        self._retention = timedelta(seconds=retention_s)
        self._on_failed = on_failed
        self._wake = asyncio.Event()
        self._fenced = False
        self._live: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._confirming: asyncio.Task[None] | None = None
        # Whether a message may have reached the client before: its send is a redelivery.
        self._seen_before = seen_before
        self._highest_sent = 0

    @property
    def highest_sent(self) -> int:
        """The highest seq this connection sent."""
        return self._highest_sent

    async def start(self) -> None:
        """Follow the live feed, then read the store from the start: nothing falls in
        between. Raises `BusError` when the live feed cannot be followed."""
        # Past this many unread live messages NATS drops them (a slow consumer), and says
        # so: the window reads the rest from the store.
        self._live = await self._queue.follow(
            self._session_id,
            self._on_live,
            pending_limit=self._window.max_unsent,
            on_dropped=self.resync,
        )
        self._window.resync()
        self._task = self._spawn(self._pump(), "deliveries")

    def acked(self, ack: Ack) -> None:
        if ack.seq is not None:
            self._window.ack(ack.seq)
        if ack.upto is not None:
            self._window.ack_upto(ack.upto)
        now = asyncio.get_running_loop().time()  # the clock `poll` is given
        for delivery, first_sent_at in self._window.acked_sends():
            metrics.ACK_LATENCY.labels(kind=delivery.kind).observe(now - first_sent_at)
        self._wake.set()

    def resync(self) -> None:
        """The live feed may have lost messages (NATS reconnected): read the store again."""
        self._window.resync()
        self._wake.set()

    def fence(self) -> None:
        """Hold every send until `unfence`: whether the session is still held here is in
        doubt (NATS came back, and another gateway may have taken it over meanwhile)."""
        self._fenced = True

    def unfence(self) -> None:
        if self._fenced:
            self._fenced = False
            self._wake.set()

    @property
    def fenced(self) -> bool:
        return self._fenced

    async def stop(self) -> None:
        """Stop sending at once; a confirmation in flight goes on. Idempotent."""
        for task in (self._task, self._reading):
            with contextlib.suppress(Exception):  # a failure was reported as it happened
                await cancel_and_wait(task)
        live, self._live = self._live, None
        if live is not None:
            with contextlib.suppress(BusError):
                await self._queue.unfollow(live)
        # Anything sent and not acked stays in the store: it is owed, not delivered.

    async def finish(self, *, within_s: float) -> None:
        """Stop sending, then confirm every ack read so far, waiting at most `within_s`.
        What is not confirmed by then stays owed (and is confirmed in the background if
        the store answers late)."""
        await self.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while (remaining := deadline - loop.time()) > 0:
            if self._confirming is not None and not self._confirming.done():
                await asyncio.wait({self._confirming}, timeout=remaining)
                continue
            if not self._window.unconfirmed:
                return
            retry_at = self._window.confirm_retry_at
            if retry_at > loop.time():  # the last attempt failed: back off, within the bound
                await asyncio.sleep(min(retry_at - loop.time(), remaining))
                continue
            confirm = self._window.confirmation()
            if confirm is None:
                break
            self._confirming = self._spawn(self._confirm(confirm), "confirm")
        if self._confirming is not None and not self._confirming.done():
            _unfinished.adopt(self._confirming)
        _log.warning("delivery.acks_unconfirmed", acks=self._window.unconfirmed)

    # -- inside --------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=f"{what} {self._session_id}")
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, ConnectionClosed):
            # A bug or an error nobody translated: the connection must not live on
            # half-alive, with nothing delivered.
            _log.error("delivery.failed", error=repr(exc), exc_info=exc)
            self._on_failed(exc)

    async def _on_live(self, stored: Stored) -> None:
        self._offer(stored)
        self._wake.set()

    def _offer(self, stored: Stored) -> None:
        self._window.offer(
            stored.seq,
            stored.delivery,
            previous=stored.previous,
            redelivered=self._seen_before(stored.seq),
        )

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if self._fenced:
                await self._wake.wait()
                continue
            for action in self._window.poll(loop.time()):
                match action:
                    case Send():
                        await self._deliver(action)
                    case ConfirmAcks():
                        self._confirming = self._spawn(self._confirm(action), "confirm")
                    case FetchBacklog():
                        self._reading = self._spawn(self._read(action), "read")
            deadline = self._window.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            # Not `asyncio.wait_for`: on 3.11 it swallows a cancellation that arrives
            # as the event fires, and a stopped pump would then wait here for ever.
            with contextlib.suppress(TimeoutError):  # on a timeout, something is due
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _read(self, fetch: FetchBacklog) -> None:
        loop = asyncio.get_running_loop()
        try:
            read = await self._queue.read(self._session_id, after=fetch.after, limit=self._batch)
            leader_last = (
                await self._queue.leader_last(self._session_id, read, fetch.after)
                if read.complete
                else None
            )
        except BusError as exc:
            _log.warning("delivery.store_unreadable", error=str(exc))
            self._window.fetch_failed(fetch, loop.time())
        else:
            for stored in read.messages:
                self._offer(stored)
            last = read.messages[-1].seq if read.messages else fetch.after
            self._window.read_done(
                fetch, loop.time(), last=last, complete=read.complete, leader_last=leader_last
            )
        self._wake.set()

    async def _deliver(self, send: Send[Delivery]) -> None:
        delivery = send.message
        self._highest_sent = max(self._highest_sent, send.seq)
        await self._send(
            Deliver(
                seq=send.seq,
                id=delivery.id,
                kind=delivery.kind,
                job_id=delivery.job_id,
                data=delivery.data,
                redelivered=send.redelivered,
                trace_id=delivery.trace_id,
            )
        )
        if send.redelivered:
            metrics.REDELIVERIES.inc()
        else:
            metrics.SENT.labels(kind=delivery.kind).inc()

    async def _confirm(self, confirm: ConfirmAcks[Delivery]) -> None:
        # Messages old enough for the sweeper to expire are removed one by one, ahead of
        # the purge: an "already gone" answer then means the sweeper expired it first.
        cutoff = datetime.now(UTC) - self._retention + _EXPIRY_MARGIN
        old = {seq for seq, d in confirm.released if d.created_at <= cutoff}
        try:
            gone = await self._queue.confirm(
                self._session_id, upto=confirm.upto, singles=(*sorted(old), *confirm.singles)
            )
        except BusError as exc:
            # Still stored, and acked: confirmed again after a back-off.
            _log.warning("delivery.confirm_failed", seqs=list(confirm.seqs), error=str(exc))
            self._window.confirm_failed(confirm, asyncio.get_running_loop().time())
            self._wake.set()
            return
        self._window.confirmed(confirm)
        self._wake.set()
        receipted: list[tuple[int, Delivery]] = []
        for seq, delivery in confirm.released:
            if seq in old and seq in gone:
                _log.warning("delivery.expired_before_ack", **_context(seq, delivery))
            elif delivery.receipt_to is None:
                _delivered(seq, delivery)
            else:
                receipted.append((seq, delivery))
        # One batch of acks, its receipts stored side by side rather than one round trip
        # after the other.
        await asyncio.gather(*(self._receipted(seq, d) for seq, d in receipted))

    async def _receipted(self, seq: int, delivery: Delivery) -> None:
        """Issue the receipt, and account for the message by the receipt that stands: the
        sweeper may have told its producer `expired` a moment before the ack's removal
        (it tells first, then removes), and then that is what became of it."""
        try:
            issued = await retried(
                lambda: self._receipts.issue(delivery, seq, "delivered"),
                attempts=3,
                within_s=_RECEIPT_TIMEOUT_S,
            )
            stands = issued.stands
        except BusError as exc:
            # Delivered all the same (the store confirmed the ack); only its producer
            # does not hear of it.
            _log.error(
                "delivery.receipt_lost",
                id=delivery.id,
                receipt_to=delivery.receipt_to,
                error=str(exc),
            )
            stands = "delivered"
        if stands == "expired":
            _log.warning("delivery.expired_before_ack", **_context(seq, delivery))
        else:
            _delivered(seq, delivery)


def _context(seq: int, delivery: Delivery) -> dict[str, object]:
    return {
        "seq": seq,
        "id": delivery.id,
        "kind": delivery.kind,
        "job_id": delivery.job_id,
        "trace_id": delivery.trace_id,
    }


def _delivered(seq: int, delivery: Delivery) -> None:
    """Count and log a message its client's ack removed (the store confirmed it)."""
    metrics.DELIVERED.labels(kind=delivery.kind).inc()
    if delivery.traceparent is not None:
        with span("ackwire.delivered", delivery.traceparent, id=delivery.id, seq=seq):
            pass  # the moment the store confirmed the client's ack
    _log.info("delivery.delivered", **_context(seq, delivery))
