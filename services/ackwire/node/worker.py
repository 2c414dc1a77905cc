"""Running attempts: pull work of each kind while a slot is free, and tell the ledger.

A job's work is the job's own message in the jobs stream, as the gateway
stored it: one durable consumer per kind, shared by every node serving it,
reads it beside the scheduler's job timers. Its `ack_wait` is the job timeout,
so JetStream itself takes a job from a node that died or went silent and hands
it to the next one. That is the one clock of an attempt's liveness: a node keeps
the work of its running attempts alive (`in_progress`, confirmed), and nothing
else.

A node writes the job's record itself (`JobRecords`): it asks the ledger before
it runs a handler (work of a job that ended, or a delivery older than the one a
newer attempt runs, is dropped unrun; the grant says which attempt it is), and
it ends the attempt: the result is stored for the client's session straight
from here, once the record's compare-and-set said this attempt decides the job.
A young job's first delivery runs at once instead, and asks after a quick time
(or, done by then, asks for its start with its end: one record write, not two).

A failure of the bus is the platform's, never the handler's: a start, an end or
a progress report the bus did not take is tried again (the work kept alive
meanwhile), and work whose start could not be written at all is handed back
unstarted, which spends none of its attempts. Only a handler that raises fails
its attempt. A handler whose attempt was superseded, or whose job ended
elsewhere, is told to stop (cancelled) at the next keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import Error as JetStreamError
from prometheus_client import Counter
from pydantic import BaseModel, JsonValue, ValidationError
from structlog.typing import FilteringBoundLogger

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.models import Delivery
from ackwire.bus.retry import retried
from ackwire.bus.session_queue import SessionQueue
from ackwire.errors import BusError, ConflictError
from ackwire.jobs.ledger import (
    AttemptEnd,
    AttemptFailed,
    Ignore,
    JobInput,
    RetryLater,
    RunHandler,
    Started,
    StartedAndEnded,
    Succeeded,
)
from ackwire.jobs.messages import TERMINAL_SUFFIX, JobSubmitted, StoredJob
from ackwire.jobs.records import Applied, JobRecords
from ackwire.lifecycle import cancel_and_wait
from ackwire.nodekit import JobKind
from ackwire.settings import Settings
from ackwire.tracing import span
from ackwire.wire.bounds import refuse_oversized_deliver

_FETCH_WAIT_S = 1.0
_FETCH_BATCH_MAX = 16
#: How long a backlog's fetch waits for more: a backlog is there already, or there is none.
_BACKLOG_WAIT_S = 0.05
#: How long a first attempt's handler may run before its start is asked for.
_QUICK_S = 1.0
#: Attempts whose end is being stored, per handler slot: past that, slots wait.
_ENDING_PER_SLOT = 4
#: A handler's exception may carry anything (a whole payload, a megabyte of stack).
_FAILURE_MESSAGE_MAX = 500
#: How long a start or an end is tried again while the bus fails (a NATS failover takes
#: seconds). A start not written by then is handed back unstarted; an end not written
#: leaves the work to come back after the job timeout, as a new attempt.
_BUS_PATIENCE_S = 30.0
#: How long JetStream has to confirm a keep-alive or a hand-back.
_ACK_CONFIRM_S = 5.0
#: JetStream's answers to a delivery (`AckPolicy.EXPLICIT`), sent as requests so that
#: the server confirms them.
_IN_PROGRESS = b"+WPI"
_NAK = b"-NAK"


T = TypeVar("T")

_log = structlog.get_logger("ackwire.node")

HANDED_BACK = Counter(
    "ackwire_node_attempts_handed_back_total",
    "Attempts still running when the node drained, handed back to start elsewhere",
)


def _job_id(msg: Msg) -> str | None:
    try:
        return JobSubmitted.model_validate_json(msg.data).job_id
    except ValidationError:
        return None


def _failure_message(exc: Exception) -> str:
    """Why an attempt failed, short enough to reach the client in an `error` delivery."""
    message = str(exc) or type(exc).__name__
    if len(message) > _FAILURE_MESSAGE_MAX:
        return message[: _FAILURE_MESSAGE_MAX - 1] + "…"
    return message


async def _patiently(call: Callable[[], Awaitable[T]], within_s: float = _BUS_PATIENCE_S) -> T:
    """`call()`, tried again while the bus fails, for `within_s`."""
    return await retried(call, attempts=None, within_s=within_s)


async def _answer(nc: Client, msg: Msg, answer: bytes) -> None:
    """Send JetStream `answer` about `msg` and wait for the server to confirm it. Raises
    `BusError`."""
    with bus_errors(f"answering {answer.decode()} for a job's work"):
        await nc.request(msg.reply, answer, timeout=_ACK_CONFIRM_S)


class StoppedError(Exception):
    """A handler was told to stop: a newer attempt superseded it, or its job ended."""


class Attempt:
    """The `JobContext` a handler gets: asks the ledger for the attempt, ends it, keeps its
    work alive, and passes its progress on to the client."""

    def __init__(
        self,
        nc: Client,
        records: JobRecords,
        queue: SessionQueue,
        msg: Msg,
        stored: StoredJob,
        *,
        node: str,
        log: FilteringBoundLogger,
    ) -> None:
        self._nc = nc
        self._records = records
        self._queue = queue
        self._msg = msg
        self._stored = stored
        self._node = node
        self._log = log
        self.delivery = msg.metadata.num_delivered
        """JetStream's delivery count of this work message."""
        self.attempt = 0
        """The attempt the ledger granted (0 until it did, or if it did not); while a
        first delivery runs before it asked, the one it is granted as if nothing else
        happened to the job: 1."""
        self.granted = False
        self._version = records.fresh(stored)
        self._progress_reports = itertools.count(1)
        self._progress: asyncio.Task[None] | None = None
        self._next_progress: float | None = None
        self._handling: asyncio.Task[object] | None = None
        """The task running the handler, while it does."""
        self._told_to_stop = False

    @property
    def work(self) -> JobSubmitted:
        return self._stored.job

    @property
    def job_id(self) -> str:
        return self._stored.job.job_id

    @property
    def trace_id(self) -> str:
        return self._stored.job.trace_id

    @property
    def started(self) -> Started:
        return Started(self.delivery, self._node)

    async def start(self, within_s: float = _BUS_PATIENCE_S) -> Applied:
        """Ask the ledger to run this delivery; its answer (`RunHandler` when granted).
        Raises `BusError` if the bus did not take it within `within_s`."""
        return self._granted(await _patiently(lambda: self._report(self.started), within_s))

    async def end(self, event: AttemptEnd | StartedAndEnded) -> Applied:
        """Report the attempt's end (with its start, for one that ran before it asked:
        `attempt` is then the one granted, or 0), again while the bus fails, for a
        bounded time."""
        applied = await _patiently(lambda: self._report(event))
        return self._granted(applied) if isinstance(event, StartedAndEnded) else applied

    def _granted(self, applied: Applied) -> Applied:
        grant = next((a for a in applied.outcome.actions if isinstance(a, RunHandler)), None)
        self.attempt = 0 if grant is None else grant.attempt
        self.granted = grant is not None
        return applied

    def runs_before_asking(self) -> None:
        """Its handler runs before its start is asked for: as the first attempt."""
        self.attempt = 1

    async def _report(self, event: JobInput) -> Applied:
        applied = await self._records.apply(self._stored, event, self._log, known=self._version)
        self._version = applied.version
        return applied

    async def progress(self, percent: float) -> None:
        """Pass the progress on to the client. Never raises the bus's errors: a report the
        bus did not take is tried again in the background, and a newer one replaces it."""
        self._next_progress = max(0.0, min(100.0, percent))
        if self._progress is None or self._progress.done():
            self._progress = asyncio.create_task(self._store_progress())

    async def _store_progress(self) -> None:
        while (percent := self._next_progress) is not None:
            self._next_progress = None
            delivery = Delivery(
                id=f"{self.job_id}:progress:{self.attempt}:{next(self._progress_reports)}",
                kind="progress",
                session_id=self.work.session_id,
                user=self.work.user,
                job_id=self.job_id,
                trace_id=self.trace_id,
                data={"percent": percent},
            )
            try:
                await _patiently(lambda: self._queue.put(delivery))  # noqa: B023
            except BusError as exc:
                self._log.warning("job.progress_lost", percent=percent, error=str(exc))

    async def beat(self) -> None:
        """Tell JetStream that the attempt runs (its one clock of liveness) and, while its
        handler runs, look at the record: a handler whose attempt a newer one superseded,
        or whose job ended elsewhere, is told to stop. A beat the bus lost is logged."""
        try:
            await _answer(self._nc, self._msg, _IN_PROGRESS)
        except BusError as exc:
            self._log.warning("job.keep_alive_lost", error=str(exc))
        if self._handling is None or not self.granted:
            return  # its end is being reported, or its start not yet asked for: no record
        try:
            current = await self._records.read(self._stored)
        except BusError:
            return
        newest = current.record
        if newest.state.terminal or newest.attempt != self.attempt:
            self._log.info(
                "job.attempt_superseded", state=newest.state.value, newest_attempt=newest.attempt
            )
            self.stop()

    def stop(self) -> None:
        """Tell the handler to stop, if it runs: `run` raises `StoppedError`."""
        if self._handling is not None:
            self._told_to_stop = True
            self._handling.cancel()

    async def run(self, handler: JobKind[BaseModel, BaseModel]) -> JsonValue:
        """The handler's result. Raises what the handler raises, or `StoppedError` when it
        was told to stop (its attempt superseded, or its job ended elsewhere)."""
        self._handling = asyncio.current_task()
        try:
            return await handler(self.work.payload, self)
        except asyncio.CancelledError:
            if not self._told_to_stop or self._handling is None:
                raise
            self._handling.uncancel()  # our own cancel, not the node's: it ends here
            raise StoppedError from None
        finally:
            self._handling = None

    async def settled(self) -> None:
        """Wait for the progress still being stored (bounded by `_BUS_PATIENCE_S`)."""
        if self._progress is not None:
            await asyncio.wait({self._progress})

    async def abandon(self) -> None:
        """Stop storing progress (the attempt was handed back, or its node stops)."""
        await cancel_and_wait(self._progress)


class _HeldSlot:
    """One handler slot, let go once (when the handler is done, or the attempt over)."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()
            self._slots = None


class Worker:
    """Pulls and runs work of the node's kinds, never more handlers at once than its
    capacity (an attempt's end is stored after its slot took the next job)."""

    def __init__(
        self,
        nc: Client,
        records: JobRecords,
        queue: SessionQueue,
        settings: Settings,
        *,
        node: str,
        kinds: dict[str, JobKind[BaseModel, BaseModel]],
        capacity: int,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._records = records
        self._queue = queue
        self._settings = settings
        self._node = node
        self._kinds = kinds
        self._slots = asyncio.Semaphore(capacity)  # fair: a waiter goes first
        self._ending = asyncio.Semaphore(capacity * _ENDING_PER_SLOT)
        # Work in hand says it is alive a few times per job timeout, running or not.
        self._keep_alive_every = settings.job_timeout_s / 3
        # A quick first attempt asks for its start with its end: one record written, not
        # two. Its handler runs before it asks, for this long at most (well within the
        # work's first keep-alive).
        self._quick_s = min(_QUICK_S, self._keep_alive_every / 2)
        self._loops: list[asyncio.Task[None]] = []
        self._pulls: list[JetStreamContext.PullSubscription] = []
        self._running: dict[asyncio.Task[None], Msg] = {}
        """Every attempt under way, and its work message."""
        self._beating: dict[Attempt, float] = {}
        """Every granted attempt not yet ended, and when it last said it runs."""

    async def start(self) -> None:
        for kind in self._kinds:
            await self._js.add_consumer(
                subjects.JOBS_STREAM,
                ConsumerConfig(
                    durable_name=subjects.work_consumer(kind),
                    filter_subject=subjects.work_of_kind(kind),
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self._settings.job_timeout_s,
                    # The ledger counts attempts (a delivery it never granted spends none)
                    # and ends a job whose last attempt's work came back.
                    max_deliver=-1,
                    max_ack_pending=-1,
                ),
            )
            pull = await self._js.pull_subscribe_bind(
                subjects.work_consumer(kind), stream=subjects.JOBS_STREAM
            )
            self._pulls.append(pull)
            self._loops.append(asyncio.create_task(self._pull(kind, pull), name=f"pull {kind}"))
        self._loops.append(asyncio.create_task(self._keep_alive(), name="keep-alive"))

    async def drain(self) -> None:
        """Stop pulling; let the attempts in flight finish for `ACKWIRE_NODE_DRAIN_S`, then
        hand the rest back: their work goes to another node at once (a nak), not after the
        job timeout, and the attempt reports nothing (the next one supersedes it)."""
        for loop in self._loops:
            await cancel_and_wait(loop)
        for pull in self._pulls:  # an open pull subscription holds up the connection's drain
            with contextlib.suppress(NatsError):
                await pull.unsubscribe()
        if self._running:
            await asyncio.wait(self._running, timeout=self._settings.node_drain_s)
        for task, msg in list(self._running.items()):
            await cancel_and_wait(task)
            with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                await msg.nak()
            HANDED_BACK.inc()
            _log.info("job.handed_back", job_id=_job_id(msg), attempt=msg.metadata.num_delivered)

    async def _keep_alive(self) -> None:
        """One loop for every attempt in hand: each says it runs at least every
        `_keep_alive_every` seconds (a third of the job timeout: two beats may be lost)."""
        loop = asyncio.get_running_loop()
        half = self._keep_alive_every / 2
        while True:
            await asyncio.sleep(half)
            due = [a for a, beat in self._beating.items() if loop.time() - beat >= half]
            for attempt in due:
                self._beating[attempt] = loop.time()
            await asyncio.gather(*(attempt.beat() for attempt in due))

    async def _pull(self, kind: str, pull: JetStreamContext.PullSubscription) -> None:
        # Each kind's pull waits at the server for one job, and gets it the moment it is
        # stored (no polling), holding no slot meanwhile: the slots are the node's, and an
        # idle kind must not keep them from one with work. It asks only while a slot is
        # free, and the job it got waits for the next slot, in turn with the other kinds:
        # at most one job of each kind waits so, and none is handed back for want of a
        # slot. Behind the first job, a backlog comes in batches, as many as slots are
        # free and no other kind is waiting for, and no more than the last job fetched
        # said were waiting behind it: a fetch for more than are there would hold the
        # ones it got until its wait ran out (nats-py waits to fill a batch).
        while True:
            await self._slots.acquire()  # in turn: a slot is free now
            self._slots.release()
            fetched = await self._fetch(kind, pull, 1, _FETCH_WAIT_S)
            if not fetched:
                continue
            self._start(kind, fetched[0], await self._slot_for(fetched[0]))
            while behind := min(fetched[-1].metadata.num_pending, _FETCH_BATCH_MAX):
                slots = await self._free_slots(behind)
                if not slots:
                    break
                fetched = await self._fetch(kind, pull, len(slots), _BACKLOG_WAIT_S)
                for msg, slot in zip(fetched, slots, strict=False):
                    self._start(kind, msg, slot)
                for slot in slots[len(fetched) :]:
                    slot.release()
                if len(fetched) < len(slots):
                    break

    async def _fetch(
        self, kind: str, pull: JetStreamContext.PullSubscription, most: int, wait_s: float
    ) -> list[Msg]:
        try:
            return await pull.fetch(most, timeout=wait_s)
        except (NatsTimeoutError, TimeoutError):
            return []
        except (NatsError, JetStreamError) as exc:
            _log.warning("node.fetch_failed", kind=kind, error=str(exc) or type(exc).__name__)
            await asyncio.sleep(_FETCH_WAIT_S)
            return []

    async def _slot_for(self, msg: Msg) -> _HeldSlot:
        """The next slot, for work in hand: kept alive for JetStream meanwhile, and handed
        back (a nak) if the node drains first."""
        if self._slots.locked():
            _log.info("job.waiting_for_slot", job_id=_job_id(msg))
        try:
            while True:
                try:
                    async with asyncio.timeout(self._keep_alive_every):
                        await self._slots.acquire()
                        return _HeldSlot(self._slots)
                except TimeoutError:
                    with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                        await msg.in_progress()
        except asyncio.CancelledError:
            with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                await msg.nak()
            raise

    async def _free_slots(self, most: int) -> list[_HeldSlot]:
        """Up to `most` slots free now that no other kind waits for."""
        slots: list[_HeldSlot] = []
        while len(slots) < most and not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            slots.append(_HeldSlot(self._slots))
        return slots

    def _start(self, kind: str, msg: Msg, slot: _HeldSlot) -> None:
        task = asyncio.create_task(self._attempt(kind, msg, slot))
        self._running[task] = msg
        task.add_done_callback(functools.partial(self._attempt_done, slot=slot))

    def _attempt_done(self, task: asyncio.Task[None], slot: _HeldSlot) -> None:
        self._running.pop(task, None)
        slot.release()  # unless the handler's end let go of it already

    async def _attempt(self, kind: str, msg: Msg, slot: _HeldSlot) -> None:
        """Ask the ledger, run the handler, store its end (the slot let go before that)."""
        try:
            work = JobSubmitted.model_validate_json(msg.data)
        except ValidationError as exc:
            _log.error("node.unreadable_work", kind=kind, error=str(exc))
            await msg.term()
            return
        log = _log.bind(
            job_id=work.job_id,
            trace_id=work.trace_id,
            session_id=work.session_id,
            delivery=msg.metadata.num_delivered,
        )
        stored = StoredJob.of(work, msg)
        attempt = Attempt(
            self._nc, self._records, self._queue, msg, stored, node=self._node, log=log
        )
        try:
            # The attempt's span: asked for, and run (its end is stored after).
            with span(
                "ackwire.attempt",
                stored.traceparent,
                trace_id=work.trace_id,
                job_id=work.job_id,
                delivery=attempt.delivery,
            ):
                end = await self._run(kind, msg, attempt, log)
            await attempt.settled()
            async with self._ending:
                # The handler is done: its slot takes the next job while its end is stored.
                slot.release()
                if end is not None:
                    await self._report(msg, attempt, end, log)
        except (BusError, ConflictError) as exc:
            # Unreported: JetStream gives the work to a node again after ack_wait.
            log.warning("job.attempt_unreported", error=str(exc))
        finally:
            self._beating.pop(attempt, None)
            await attempt.abandon()

    def _asked_by(self, attempt: Attempt) -> float:
        """When a handler running before it asked must have its start granted: a quick
        time before the job's pending deadline, when a timer would find it not started."""
        submitted_at = attempt.work.submitted_at.timestamp()
        return submitted_at + self._settings.pending_timeout_s - self._quick_s

    def _runs_before_asking(self, attempt: Attempt) -> bool:
        """Whether the handler may run before its start is asked for: the work's first
        delivery (no attempt can have been granted), of a job young enough to ask for its
        start after a quick time, and have it granted before `_asked_by`."""
        return attempt.delivery == 1 and time.time() + self._quick_s < self._asked_by(attempt)

    async def _run(
        self, kind: str, msg: Msg, attempt: Attempt, log: FilteringBoundLogger
    ) -> AttemptEnd | StartedAndEnded | None:
        """Run the handler once granted: how it ended (`None`: not granted, or told to
        stop). A quick first attempt's start is asked for with its end."""
        if not self._runs_before_asking(attempt):
            if not await self._granted(kind, msg, attempt, log):
                return None
            self._beating[attempt] = asyncio.get_running_loop().time()
            return await self._outcome(kind, attempt, log.bind(attempt=attempt.attempt))
        # Its work is kept alive from now on, as a granted attempt's is.
        self._beating[attempt] = asyncio.get_running_loop().time()
        attempt.runs_before_asking()
        log = log.bind(attempt=attempt.attempt)
        handling = asyncio.create_task(self._outcome(kind, attempt, log))
        try:
            await asyncio.wait({handling}, timeout=self._quick_s)
            if handling.done():
                end = handling.result()
                if end is None:
                    return None
                # Its start is asked for with its end (`job.work_dropped` if refused).
                log.info("job.attempt_started", kind=kind, attempt=attempt.attempt, asked=False)
                return StartedAndEnded(attempt.started, end)
            within_s = self._asked_by(attempt) - time.time()
            if not await self._granted(kind, msg, attempt, log, within_s):
                attempt.stop()  # the job ended, another delivery runs, or the bus failed
                return None
            return await handling
        finally:
            await cancel_and_wait(handling)

    async def _granted(
        self,
        kind: str,
        msg: Msg,
        attempt: Attempt,
        log: FilteringBoundLogger,
        within_s: float = _BUS_PATIENCE_S,
    ) -> bool:
        """Whether the ledger granted the attempt, asked for within `within_s` (if not,
        the work was answered as it needs)."""
        try:
            started = await attempt.start(max(0.0, within_s))
        except (BusError, ConflictError) as exc:
            # Not started: handed back, it spends none of the job's attempts.
            log.warning("job.start_unrecorded", error=str(exc))
            with contextlib.suppress(BusError):
                await _answer(self._nc, msg, _NAK)
            return False
        if not attempt.attempt:
            await self._dropped(msg, started, log)
            return False
        log.info("job.attempt_started", kind=kind, attempt=attempt.attempt)
        return True

    async def _dropped(self, msg: Msg, refused: Applied, log: FilteringBoundLogger) -> None:
        """The ledger granted the delivery no attempt: its work is answered as it needs."""
        log.info("job.work_dropped", reason=_reason(refused))
        if refused.version.record.state.terminal:
            with contextlib.suppress(NatsError):
                await msg.ack()  # the ledger withdrew the work (again) already
        # else a newer delivery is another attempt's: its answer is theirs

    async def _report(
        self,
        msg: Msg,
        attempt: Attempt,
        end: AttemptEnd | StartedAndEnded,
        log: FilteringBoundLogger,
    ) -> None:
        """Report the attempt's end (and its start, if it ran before asking), then answer
        JetStream for the work."""
        ended = await attempt.end(end)
        if isinstance(end, StartedAndEnded) and not attempt.granted:
            await self._dropped(msg, ended, log)
            return
        await self._settle(msg, attempt, ended, log.bind(attempt=attempt.attempt))

    async def _outcome(
        self, kind: str, attempt: Attempt, log: FilteringBoundLogger
    ) -> AttemptEnd | None:
        """How the handler ended: its result, its failure, or `None` when it was told to
        stop (its attempt superseded, or its job ended elsewhere: nothing to report)."""
        try:
            data = await attempt.run(self._kinds[kind])
        except StoppedError:
            return None
        except Exception as exc:
            failure = _failure_message(exc)
            log.warning("job.attempt_failed", error=failure)
            return AttemptFailed(attempt.attempt, failure)
        try:
            # Stored, a result no client accepts would never be delivered.
            refuse_oversized_deliver(
                self._settings.max_frame_bytes,
                delivery_id=attempt.job_id + TERMINAL_SUFFIX,
                kind="result",
                job_id=attempt.job_id,
                data=data,
            )
        except ValueError as exc:
            failure = _failure_message(exc)
            log.warning("job.attempt_failed", error=failure)
            return AttemptFailed(attempt.attempt, failure)
        return Succeeded(attempt.attempt, data)

    async def _settle(
        self, msg: Msg, attempt: Attempt, ended: Applied, log: FilteringBoundLogger
    ) -> None:
        """Answer JetStream for the work once the ledger took the attempt's end."""
        record = ended.version.record
        if any(isinstance(action, RetryLater) for action in ended.outcome.actions):
            # Failed with attempts left: the next one, at once. A hand-back JetStream did
            # not confirm is given again by JetStream after ack_wait.
            with contextlib.suppress(BusError):
                await _answer(self._nc, msg, _NAK)
        elif record.attempt != attempt.attempt:
            # A newer attempt runs this same message: its answer is that attempt's to give.
            log.info("job.superseded_attempt_ended")
        elif record.state.terminal:
            with contextlib.suppress(NatsError):
                # Withdrawn, or to be by whoever ended the job (or a sweep): nothing to redo.
                await msg.ack()


def _reason(applied: Applied) -> str:
    """Why the ledger did not grant a start, for the log."""
    reasons = [a.reason for a in applied.outcome.actions if isinstance(a, Ignore)]
    return reasons[0] if reasons else f"job {applied.version.record.state.value}"
