"""Deleting one stored message of a stream, telling "already gone" from a failure."""

from __future__ import annotations

import json

from nats.aio.client import Client

from ackwire.errors import StoreRejectedError

_TIMEOUT_S = 5.0

#: What a delete of a message that is already gone answers: "no message found" (the
#: stream's last one, or past its end) or "sequence N not found" (one in the middle).
_ALREADY_GONE = frozenset({10057, 10043})


async def delete_message(nc: Client, stream: str, seq: int) -> bool:
    """Remove message `seq` of `stream`; `False` if it was gone already. Raises what nats-py
    raises (the caller translates it at its boundary), or `StoreRejectedError`."""
    # `jsm.delete_msg` always erases securely (slow); a plain delete is enough here.
    response = await nc.request(
        f"$JS.API.STREAM.MSG.DELETE.{stream}",
        json.dumps({"seq": seq, "no_erase": True}).encode(),
        timeout=_TIMEOUT_S,
    )
    answer = json.loads(response.data)
    if answer.get("success"):
        return True
    error = answer.get("error", {})
    if error.get("err_code") in _ALREADY_GONE:
        return False
    raise StoreRejectedError(f"deleting {seq} of {stream}: {error.get('description', answer)}")
