"""Reading a stream's messages in batches with JetStream's batch direct get.

nats-py has no call for it: the request goes to `$JS.API.DIRECT.GET.<stream>`
and the answers come to an inbox, one message each, until a status message
says the batch (204) or the stream (404) has ended.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg

_READ_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class BatchRead:
    messages: list[Msg]
    complete: bool
    """The read reached the end of what matches (else it stopped at its limit)."""


async def read_batch(nc: Client, stream: str, subject: str, *, after: int, limit: int) -> BatchRead:
    """Up to `limit` messages of `stream` on `subject` (wildcards allowed) with a
    sequence above `after`, in order. Raises `TimeoutError` if the stream does not
    answer in time."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=limit + 1)
    request = {"seq": after + 1, "next_by_subj": subject, "batch": limit}
    messages: list[Msg] = []
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        async with asyncio.timeout(_READ_TIMEOUT_S):
            while True:
                msg = await sub.next_msg(timeout=_READ_TIMEOUT_S)
                status = (msg.headers or {}).get("Status")
                if status == "404":  # nothing (more) after `after`
                    return BatchRead(messages, complete=True)
                if status == "204":  # end of batch
                    pending = int((msg.headers or {}).get("Nats-Num-Pending", "0"))
                    return BatchRead(messages, complete=pending == 0)
                messages.append(msg)
    finally:
        await sub.unsubscribe()
