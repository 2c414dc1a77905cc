"""Running attempts: pull work of each kind while a slot is free, and tell the ledger.

A job's work is the job's own message in the jobs stream, as the gateway
stored it: one durable consumer per kind, shared by every node serving it,
reads it beside the scheduler's. Its `ack_wait` is the job timeout and its
`max_deliver` the attempt limit, so JetStream itself takes a job from a node
that died or went silent and hands it to the next one. The attempt number is
JetStream's delivery count of the message.

A node writes the job's record itself (`JobRecords`): it asks the ledger
before it runs a handler (work of a job that ended, or that a newer attempt
runs, is dropped unrun), keeps the attempt alive whenever it reported nothing
for a third of the job timeout (for JetStream, `in_progress`, and for the
ledger), and ends it: the result is stored for the client's session straight
from here, once the record's compare-and-set said this attempt decides the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

import stamina
import structlog
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
from ackwire.errors import BusError, ConflictError
from ackwire.jobs.ledger import (
    AttemptFailed,
    JobInput,
    KeptAlive,
    Progressed,
    RunHandler,
    Started,
    Succeeded,
)
from ackwire.jobs.messages import TERMINAL_SUFFIX, JobSubmitted, StoredJob
from ackwire.jobs.records import Applied, JobRecords, Version
from ackwire.lifecycle import cancel_and_wait
from ackwire.nodekit import JobKind
from ackwire.settings import Settings
from ackwire.tracing import span
from ackwire.wire.bounds import refuse_oversized_deliver

_FETCH_WAIT_S = 1.0
_FETCH_BATCH_MAX = 16
#: How long a backlog's fetch waits for more: a backlog is there already, or there is none.
_BACKLOG_WAIT_S = 0.05
#: Attempts whose end is being stored, per handler slot: past that, slots wait.
_ENDING_PER_SLOT = 4
#: A handler's exception may carry anything (a whole payload, a megabyte of stack).
_FAILURE_MESSAGE_MAX = 500
#: How long an attempt's end is retried while the bus fails (a NATS failover takes
#: seconds); after that its work comes back after the job timeout, and runs again.
_END_REPORTED_WITHIN_S = 30.0
_END_RETRY_FIRST_S = 0.1
_END_RETRY_MAX_S = 2.0

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


class Attempt:
    """The `JobContext` a handler gets: tells the ledger of the attempt, keeps its work alive."""

    def __init__(
        self, records: JobRecords, msg: Msg, stored: StoredJob, node: str, log: FilteringBoundLogger
    ) -> None:
        self._records = records
        self._msg = msg
        self._stored = stored
        self._node = node
        self._log = log
        self.attempt = msg.metadata.num_delivered
        self._version: Version | None = None
        self._loop = asyncio.get_running_loop()
        self._reported_at = self._loop.time()

    @property
    def work(self) -> JobSubmitted:
        return self._stored.job

    @property
    def job_id(self) -> str:
        return self._stored.job.job_id

    @property
    def trace_id(self) -> str:
        return self._stored.job.trace_id

    async def start(self) -> bool:
        """Whether the ledger lets this node run the attempt."""
        applied = await self.report(Started(self.attempt, self._node))
        return applied is not None and RunHandler() in applied.outcome.actions

    async def progress(self, percent: float) -> None:
        await self._msg.in_progress()
        await self.report(Progressed(self.attempt, max(0.0, min(100.0, percent))))

    async def report(self, event: JobInput) -> Applied | None:
        """Apply `event` to the job's record (and carry out the outcome); raises `BusError`."""
        applied = await self._records.apply(
            self.job_id, event, self._log, stored=self._stored, known=self._version
        )
        if applied is not None:
            self._version = applied.version
        self._reported_at = self._loop.time()
        return applied

    async def end(self, event: Succeeded | AttemptFailed) -> Applied | None:
        """Report the attempt's end, again while the bus fails, for a bounded time."""
        applied: Applied | None = None
        async for retry in stamina.retry_context(
            on=BusError,
            attempts=None,
            timeout=_END_REPORTED_WITHIN_S,
            wait_initial=_END_RETRY_FIRST_S,
            wait_max=_END_RETRY_MAX_S,
        ):
            with retry:
                applied = await self.report(event)
        return applied

    async def keep_alive(self, every: float) -> None:
        """Tell JetStream and the ledger that the attempt runs, whenever it reported nothing
        for `every` seconds. A beat the bus lost is logged, and the next one is `every` on."""
        while True:
            await asyncio.sleep(self._reported_at + every - self._loop.time())
            if self._loop.time() - self._reported_at < every:
                continue  # a report went meanwhile
            self._reported_at = self._loop.time()
            try:
                await self._msg.in_progress()
                await self.report(KeptAlive(self.attempt))
            except (NatsError, JetStreamError, TimeoutError, BusError, ConflictError) as exc:
                self._log.warning("job.keep_alive_lost", error=str(exc) or type(exc).__name__)


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
        js: JetStreamContext,
        records: JobRecords,
        settings: Settings,
        *,
        node: str,
        kinds: dict[str, JobKind[BaseModel, BaseModel]],
        capacity: int,
    ) -> None:
        self._js = js
        self._records = records
        self._settings = settings
        self._node = node
        self._kinds = kinds
        self._slots = asyncio.Semaphore(capacity)  # fair: a waiter goes first
        self._ending = asyncio.Semaphore(capacity * _ENDING_PER_SLOT)
        # Work in hand says it is alive a few times per job timeout, running or not.
        self._keep_alive_every = settings.job_timeout_s / 3
        self._loops: list[asyncio.Task[None]] = []
        self._pulls: list[JetStreamContext.PullSubscription] = []
        self._running: dict[asyncio.Task[None], Msg] = {}
        """Every attempt under way, and its work message."""

    async def start(self) -> None:
        for kind in self._kinds:
            await self._js.add_consumer(
                subjects.JOBS_STREAM,
                ConsumerConfig(
                    durable_name=subjects.work_consumer(kind),
                    filter_subject=subjects.job_subject(kind),
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self._settings.job_timeout_s,
                    max_deliver=self._settings.max_attempts,
                    max_ack_pending=-1,
                ),
            )
            pull = await self._js.pull_subscribe_bind(
                subjects.work_consumer(kind), stream=subjects.JOBS_STREAM
            )
            self._pulls.append(pull)
            self._loops.append(asyncio.create_task(self._pull(kind, pull), name=f"pull {kind}"))

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

    async def _pull(self, kind: str, pull: JetStreamContext.PullSubscription) -> None:
        # Each kind's pull waits at the server for one job, and gets it the moment it is
        # stored (no polling), holding no slot meanwhile: the slots are the node's, and an
        # idle kind must not keep them from one with work. It asks only while a slot is
        # free, and the job it got waits for the next slot, in turn with the other kinds:
        # at most one job of each kind waits so, and none is handed back for want of a
        # slot. Behind the first job, a backlog comes in batches, as many as slots are
        # free and no other kind is waiting for.
        while True:
            await self._slots.acquire()  # in turn: a slot is free now
            self._slots.release()
            first = await self._fetch(kind, pull, 1, _FETCH_WAIT_S)
            if not first:
                continue
            self._start(kind, first[0], await self._slot_for(first[0]))
            while slots := await self._free_slots(_FETCH_BATCH_MAX):
                batch = await self._fetch(kind, pull, len(slots), _BACKLOG_WAIT_S)
                for msg, slot in zip(batch, slots, strict=False):
                    self._start(kind, msg, slot)
                for slot in slots[len(batch) :]:
                    slot.release()
                if len(batch) < len(slots):
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
            attempt=msg.metadata.num_delivered,
        )
        stored = StoredJob.of(work, msg)
        attempt = Attempt(self._records, msg, stored, self._node, log)
        with span(
            "ackwire.attempt",
            stored.traceparent,
            trace_id=work.trace_id,
            job_id=work.job_id,
            attempt=attempt.attempt,
        ):
            await self._ask_and_run(kind, msg, slot, attempt, log)

    async def _ask_and_run(
        self, kind: str, msg: Msg, slot: _HeldSlot, attempt: Attempt, log: FilteringBoundLogger
    ) -> None:
        try:
            if not await attempt.start():
                log.info("job.work_dropped")
                await msg.term()
                return
            log.info("job.attempt_started", kind=kind)
            end: Succeeded | AttemptFailed
            try:
                end = Succeeded(attempt.attempt, await self._run(kind, attempt))
            except Exception as exc:
                failure = _failure_message(exc)
                log.warning("job.attempt_failed", error=failure)
                end = AttemptFailed(attempt.attempt, failure)
            async with self._ending:
                # The handler is done: its slot takes the next job while its end is stored.
                slot.release()
                await self._settle(msg, attempt.attempt, await attempt.end(end), log)
        except (NatsError, JetStreamError, TimeoutError, BusError, ConflictError) as exc:
            # Unreported or unacked: JetStream gives the work to a node again after ack_wait.
            log.warning("job.attempt_unreported", error=str(exc) or type(exc).__name__)

    async def _run(self, kind: str, attempt: Attempt) -> JsonValue:
        """The handler's result, the attempt kept alive while it runs (and only then: a
        beat after the attempt's last report would say a failed attempt still runs)."""
        keep_alive = asyncio.create_task(attempt.keep_alive(self._keep_alive_every))
        try:
            data = await self._kinds[kind](attempt.work.payload, attempt)
        finally:
            await cancel_and_wait(keep_alive)
        # Stored, a result no client accepts would never be delivered.
        refuse_oversized_deliver(
            self._settings.max_frame_bytes,
            delivery_id=attempt.job_id + TERMINAL_SUFFIX,
            kind="result",
            job_id=attempt.job_id,
            data=data,
        )
        return data

    async def _settle(
        self, msg: Msg, attempt: int, ended: Applied | None, log: FilteringBoundLogger
    ) -> None:
        """Answer JetStream for the work once the ledger took the attempt's end."""
        if ended is None:  # the job's record is gone (expired): nothing waits for it
            await msg.term()
            return
        record = ended.outcome.record
        if record.attempt > attempt:
            # A newer attempt runs this same message: its answer is that attempt's to give.
            log.info("job.superseded_attempt_ended")
            return
        if record.state.terminal:
            await msg.ack()  # the message is withdrawn already, or will be by the job's timer
        else:
            await msg.nak()  # a failed attempt with attempts left: the next one, at once
