"""Receipts back to producers: a message was delivered, or expired undelivered.

Receipts are stored (a stream, kept as long as messages are), so a producer
that starts waiting after the client acked still gets its receipt, and one
that follows its receipts misses none while it is away (a durable consumer).
A receipt is issued once per message and session: the store dedupes a
retried one by its id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.following import Following
from ackwire.bus.models import Delivery, Receipt


@dataclass(frozen=True, slots=True)
class Issued:
    stands: Literal["delivered", "expired"]
    """The outcome its producer hears: the first receipt stored for the message."""
    first: bool
    """This call stored that first receipt: what became of the message was decided here
    (a retry whose first answer was lost says `False`)."""


class Receipts:
    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._js = nc.jetstream()

    async def issue(
        self, delivery: Delivery, seq: int, outcome: Literal["delivered", "expired"]
    ) -> Issued:
        """Store a receipt for `delivery` (which must name its producer); the outcome that
        stands: the first receipt stored for the message in its session (within the store's
        duplicate window) is the one its producer hears. Raises `BusError`."""
        assert delivery.receipt_to is not None
        receipt = Receipt(
            message_id=delivery.id,
            session_id=delivery.session_id,
            user=delivery.user,
            seq=seq,
            outcome=outcome,
        )
        with bus_errors(f"storing the receipt of {delivery.id}"):
            ack = await self._js.publish(
                subjects.receipt_subject(delivery.receipt_to, delivery.id, delivery.session_id),
                receipt.to_bytes(),
                headers={"Nats-Msg-Id": f"receipt/{delivery.session_id}/{delivery.id}"},
            )
            if not ack.duplicate:
                return Issued(outcome, first=True)
            # Ours again (a retry whose first answer was lost), or another's first.
            first = await self._js.get_msg(subjects.RECEIPTS_STREAM, ack.seq)
        return Issued(Receipt.model_validate_json(first.data or b"").outcome, first=False)

    async def first(self, producer: str, message_id: str) -> Receipt:
        """The first receipt for `message_id` (any session), stored before or after the
        call. Waits as long as it takes: bound it with `asyncio.timeout`."""
        sub = await self._js.subscribe(
            subjects.receipts_of(producer, message_id),
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        try:
            async for msg in sub.messages:
                return Receipt.model_validate_json(msg.data)
        finally:
            await sub.unsubscribe()
        raise ConnectionError("the receipt subscription ended")

    async def follow(self, producer: str) -> Following[Receipt]:
        """Every receipt for `producer` stored from the return on."""
        sub = await self._js.subscribe(
            subjects.receipts_of(producer),
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
        )
        return Following(sub, lambda msg: Receipt.model_validate_json(msg.data))
