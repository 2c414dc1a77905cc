"""What the application holds: a `Job` it submitted, a `Subscription` it follows.

Both are filled by the client's driver from the machine's actions; the
application only awaits and iterates them. Every buffer has a bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

from ackwire.client.exceptions import JobFailedError
from ackwire.errors import AckwireError
from ackwire.wire.frames import Deliver, Event

#: Progress updates kept for a reader of `Job.progress()`; older unread ones give way
#: (progress is a level: the latest says where the job is).
PROGRESS_KEPT = 64
#: Events kept for a subscription's reader; past it the oldest give way, and the reader
#: is told of the gap (as the gateway tells of one).
EVENTS_KEPT = 4096

ProgressCallback = Callable[[Deliver], None]


class Job:
    """A submitted job: its `accepted`, its progress, its one `result` or `error`."""

    def __init__(self, ref: str, on_progress: ProgressCallback | None) -> None:
        self.ref = ref
        self._job_id: str | None = None
        self._on_progress = on_progress
        loop = asyncio.get_running_loop()
        self._accepted: asyncio.Future[str] = loop.create_future()
        self._outcome: asyncio.Future[JsonValue] = loop.create_future()
        self._progress: deque[Deliver] = deque(maxlen=PROGRESS_KEPT)
        self._changed = asyncio.Event()

    @property
    def job_id(self) -> str | None:
        """The gateway's id for the job, once it is durably stored."""
        return self._job_id

    async def accepted(self) -> str:
        """Wait until the job is stored; its job id."""
        return await asyncio.shield(self._accepted)

    async def result(self) -> JsonValue:
        """The job's result `data`. Raises `JobFailedError` when it ended in `error`,
        or the request's failure (`DeadlineExceededError`, `SessionResetError`, …)."""
        return await asyncio.shield(self._outcome)

    async def progress(self) -> AsyncIterator[Deliver]:
        """Each `progress` delivery (the latest `PROGRESS_KEPT` unread), until the job ends."""
        while True:
            while self._progress:
                yield self._progress.popleft()
            if self._outcome.done():
                return
            self._changed.clear()
            await self._changed.wait()

    # -- the driver's side ------------------------------------------------------------

    def was_accepted(self, job_id: str) -> None:
        if not self._accepted.done():
            self._job_id = job_id
            self._accepted.set_result(job_id)

    def delivered(self, deliver: Deliver) -> None:
        if deliver.kind == "progress":
            self._progress.append(deliver)
            if self._on_progress is not None:
                self._on_progress(deliver)
        elif deliver.kind == "error":
            data = deliver.data if isinstance(deliver.data, dict) else {}
            self._settle(
                JobFailedError(
                    deliver.job_id or "",
                    str(data.get("code", "failed")),
                    str(data.get("message", "")),
                )
            )
        else:
            self._settle(deliver.data)
        self._changed.set()

    def failed(self, error: AckwireError) -> None:
        if not self._accepted.done():
            _fail(self._accepted, error)
        self._settle(error)
        self._changed.set()

    def _settle(self, outcome: JsonValue | AckwireError) -> None:
        if self._outcome.done():
            return
        if isinstance(outcome, AckwireError):
            _fail(self._outcome, outcome)
        else:
            self._outcome.set_result(outcome)


@dataclass(frozen=True, slots=True)
class Gap:
    """Events of `topic` with `after < seq < before` may never come: the gateway's store
    no longer held them, or this reader fell `EVENTS_KEPT` behind."""

    topic: str
    after: int
    before: int


class Subscription:
    """One topic's events for the application: snapshot first, then live."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._items: deque[Event | Gap] = deque()
        self._ended: AckwireError | None = None
        self._changed = asyncio.Event()

    def event(self, event: Event) -> None:
        if len(self._items) >= EVENTS_KEPT:
            self._drop_oldest(event.seq)
        self._items.append(event)
        self._changed.set()

    def gap(self, gap: Gap) -> None:
        self._items.append(gap)
        self._changed.set()

    def end(self, error: AckwireError) -> None:
        self._ended = error
        if not self.subscribed.done():
            _fail(self.subscribed, error)
        self._changed.set()

    async def items(self) -> AsyncIterator[Event | Gap]:
        while True:
            while self._items:
                yield self._items.popleft()
            if self._ended is not None:
                raise self._ended
            self._changed.clear()
            await self._changed.wait()

    def _drop_oldest(self, incoming: int) -> None:
        """Drop the older half (at once, so that a slow reader is not told of a gap at
        every event) and say which seqs went."""
        dropped = [self._items.popleft() for _ in range(EVENTS_KEPT // 2)]
        first = dropped[0]
        after = first.seq - 1 if isinstance(first, Event) else first.after
        kept = next((item.seq for item in self._items if isinstance(item, Event)), incoming)
        self._items.appendleft(Gap(self.topic, after, kept))


def _fail(future: asyncio.Future[Any], error: AckwireError) -> None:
    """Fail `future`, marked as retrieved: whoever awaits it is told; if nobody does (a
    caller that waited only for the result, say), asyncio does not log it as lost."""
    future.set_exception(error)
    future.exception()
