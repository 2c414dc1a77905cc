"""Bus calls retried with back-off, paying for the retry machinery only after a failure.

`stamina.retry_context` costs a tenacity state machine, its stop and wait objects and
hook look-ups on every call, even one that succeeds at once: on a hot path (a
receipt per delivered message) that was a tenth of the gateway's CPU. `retried` makes
the call once plainly; only a `BusError` enters stamina's loop, with the bounds a
`retry_context` around the call would have had: the failure counts as the first
attempt, the back-off before the second is the same, and the time allowed runs
from the first call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import stamina

from ackwire.errors import BusError

T = TypeVar("T")


async def retried(call: Callable[[], Awaitable[T]], *, attempts: int | None, within_s: float) -> T:
    """`await call()`, retried on `BusError` as `stamina.retry_context(on=BusError,
    attempts=attempts, timeout=within_s)` would: raises the last `BusError` once the
    attempts or the time are spent."""
    started = time.monotonic()
    try:
        return await call()
    except BusError as exc:
        failure = exc
    remaining_s = within_s - (time.monotonic() - started)
    if remaining_s <= 0:  # stamina would not have waited for a second attempt either
        raise failure
    replayed = False
    async for attempt in stamina.retry_context(on=BusError, attempts=attempts, timeout=remaining_s):
        with attempt:
            if not replayed:
                # The first call's failure is stamina's first attempt: it counts it and
                # backs off, so the second call comes when it would have.
                replayed = True
                raise failure
            return await call()
    raise AssertionError("stamina stopped retrying without raising")  # pragma: no cover
