"""Moving a session's owed messages to its client, and the client's acks back to the store.

`DeliveryWindow` (sans I/O) decides; the pump only carries out its actions:
it follows the session's live subject, reads the backlog, sends `deliver`
frames, and turns acks into confirmed removals from the store. A message is
logged and counted as delivered only after the store confirmed the removal
that the client's ack asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import stamina
import structlog
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from websockets.exceptions import ConnectionClosed

from ackwire.bus.models import Delivery
from ackwire.bus.receipts import Receipts
from ackwire.bus.session_queue import SessionQueue, SessionQueueError, Stored
from ackwire.gateway import metrics
from ackwire.lifecycle import cancel_and_wait
from ackwire.wire.frames import Ack, Deliver
from ackwire.wire.window import ConfirmAcks, DeliveryWindow, FetchBacklog, Send

_log = structlog.get_logger("ackwire.gateway")

_BUS_ERRORS = (NatsError, JetStreamError, TimeoutError)
_RECEIPT_TIMEOUT_S = 5.0

SendFrame = Callable[[Deliver], Awaitable[None]]


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
        sent_before: int = 0,
    ) -> None:
        self._queue = queue
        self._receipts = receipts
        self._session_id = session_id
        self._send = send
        self._window: DeliveryWindow[Delivery] = DeliveryWindow(size=window, ack_wait=ack_wait)
        self._batch = self._window.max_unsent // 2
        self._wake = asyncio.Event()
        self._live: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._sent: dict[int, Delivery] = {}
        # A resumed session's messages up to here may have reached an earlier connection.
        self._sent_before = sent_before
        self._highest_sent = 0
        self._stopped = False

    @property
    def highest_sent(self) -> int:
        return self._highest_sent

    async def start(self) -> None:
        """Follow the live feed first, then read the backlog: nothing falls in between."""
        # Past this many unread live messages NATS drops them (a slow consumer); the
        # window sees the gap in the chain and reads the rest from the store.
        self._live = await self._queue.follow(
            self._session_id, self._on_live, pending_limit=self._window.max_unsent
        )
        await self._read_backlog(after=0)
        if self._stopped:  # stopped while starting (the session was taken over)
            await self._unsubscribe()
            return
        self._task = asyncio.create_task(self._run(), name=f"deliveries {self._session_id}")

    async def stop(self) -> None:
        """Stop sending at once. Idempotent, and safe while `start` is still running."""
        self._stopped = True
        await cancel_and_wait(self._task)
        await self._unsubscribe()
        # Anything sent and not acked stays in the store: it is owed, not delivered.

    async def _unsubscribe(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            try:
                await live.unsubscribe()
            except NatsError as exc:
                _log.debug("delivery.unsubscribe_failed", error=str(exc))

    def acked(self, ack: Ack) -> None:
        if ack.seq is not None:
            self._window.ack(ack.seq)
        if ack.upto is not None:
            self._window.ack_upto(ack.upto)
        self._wake.set()

    async def _on_live(self, stored: Stored) -> None:
        self._offer(stored)
        self._wake.set()

    def _offer(self, stored: Stored) -> None:
        self._window.offer(
            stored.seq,
            stored.delivery,
            previous=stored.previous,
            redelivered=stored.seq <= self._sent_before,
        )

    async def _read_backlog(self, after: int) -> None:
        try:
            read = await self._queue.read(self._session_id, after=after, limit=self._batch)
        except SessionQueueError as exc:
            _log.warning("delivery.backlog_unreadable", error=str(exc))
            self._window.fetch_failed()
            return
        for stored in read.messages:
            self._offer(stored)
        if read.complete:
            self._window.read_complete()
        else:
            self._window.more_in_store(after=read.messages[-1].seq if read.messages else after)

    async def _run(self) -> None:
        try:
            await self._pump()
        except ConnectionClosed:
            # The socket failed under a send: the connection is over, and what was sent
            # and not acked stays owed. The connection's handler unregisters it.
            _log.info("delivery.connection_lost", unacked=len(self._sent))

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            for action in self._window.poll(loop.time()):
                match action:
                    case Send():
                        await self._deliver(action)
                    case ConfirmAcks():
                        await self._confirm(action)
                    case FetchBacklog(after=after):
                        await self._read_backlog(after)
                        self._wake.set()
            deadline = self._window.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            # Not `asyncio.wait_for`: on 3.11 it swallows a cancellation that arrives
            # as the event fires, and a stopped pump would then wait here for ever.
            with contextlib.suppress(TimeoutError):  # on a timeout, a redelivery is due
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _deliver(self, send: Send[Delivery]) -> None:
        delivery = send.message
        self._sent[send.seq] = delivery
        self._highest_sent = max(self._highest_sent, send.seq)
        await self._send(
            Deliver(
                seq=send.seq,
                id=delivery.id,
                kind=delivery.kind,
                job_id=delivery.job_id,
                data=delivery.data,
                redelivered=send.redelivered,
            )
        )
        if send.redelivered:
            metrics.REDELIVERIES.inc()

    async def _confirm(self, confirm: ConfirmAcks) -> None:
        try:
            await self._queue.confirm(self._session_id, upto=confirm.upto, singles=confirm.singles)
        except SessionQueueError as exc:
            # Still in the store, so still owed: it comes again on the next connection.
            _log.warning("delivery.confirm_failed", seqs=list(confirm.released), error=str(exc))
            return
        receipted: list[tuple[Delivery, int]] = []
        for seq in confirm.released:
            delivery = self._sent.pop(seq, None)
            if delivery is None:
                continue  # acked before this connection sent it (a resumed client)
            metrics.DELIVERED.labels(kind=delivery.kind).inc()
            _log.info(
                "delivery.delivered",
                seq=seq,
                id=delivery.id,
                kind=delivery.kind,
                job_id=delivery.job_id,
                trace_id=delivery.trace_id,
            )
            if delivery.receipt_to is not None:
                receipted.append((delivery, seq))
        # One batch of acks, its receipts stored side by side rather than one round trip
        # after the other ahead of the next sends.
        await asyncio.gather(*(self._issue_receipt(d, seq) for d, seq in receipted))

    async def _issue_receipt(self, delivery: Delivery, seq: int) -> None:
        try:
            async for attempt in stamina.retry_context(
                on=_BUS_ERRORS, attempts=3, timeout=_RECEIPT_TIMEOUT_S
            ):
                with attempt:
                    await self._receipts.issue(delivery, seq, "delivered")
        except _BUS_ERRORS as exc:
            # Delivered all the same (the store confirmed the ack); only its producer
            # does not hear of it.
            _log.error(
                "delivery.receipt_lost",
                id=delivery.id,
                receipt_to=delivery.receipt_to,
                error=str(exc) or type(exc).__name__,
            )
