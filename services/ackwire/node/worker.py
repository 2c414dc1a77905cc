"""Running attempts: pull work of each kind only while a slot is free, report every step.

One durable consumer per kind, shared by every node serving it. Its `ack_wait`
is the job timeout and its `max_deliver` the attempt limit, so JetStream
itself takes a job from a node that died or went silent and hands it to the
next one. A running attempt keeps itself alive, for JetStream (`in_progress`
on its work message) and for the ledger (a report), whenever it reported
nothing for a third of the job timeout; a progress report does both.
The attempt number is JetStream's delivery count of the work message.

Before it runs a handler, a node reads the job's record: work of a job that
ended (the client was told its outcome) or that a newer attempt runs is
dropped unrun.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import Error as JetStreamError
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, JsonValue, ValidationError

from ackwire.bus import subjects
from ackwire.jobs.ledger import JobRecord
from ackwire.jobs.messages import (
    TERMINAL_SUFFIX,
    AttemptAlive,
    AttemptFailedEvent,
    AttemptProgressed,
    AttemptStarted,
    AttemptSucceeded,
    JobSubmitted,
)
from ackwire.lifecycle import cancel_and_wait
from ackwire.nodekit import JobKind
from ackwire.settings import Settings
from ackwire.wire.bounds import refuse_oversized_deliver

_FETCH_WAIT_S = 1.0
#: A handler's exception may carry anything (a whole payload, a megabyte of stack).
_FAILURE_MESSAGE_MAX = 500

_log = structlog.get_logger("ackwire.node")


def _failure_message(exc: Exception) -> str:
    """Why an attempt failed, short enough to reach the client in an `error` delivery."""
    message = str(exc) or type(exc).__name__
    if len(message) > _FAILURE_MESSAGE_MAX:
        return message[: _FAILURE_MESSAGE_MAX - 1] + "…"
    return message


class Attempt:
    """The `JobContext` a handler gets: reports progress and keeps the work message alive."""

    def __init__(self, js: JetStreamContext, msg: Msg, work: JobSubmitted, node: str) -> None:
        self._js = js
        self._msg = msg
        self._work = work
        self._node = node
        self.attempt = msg.metadata.num_delivered
        self._loop = asyncio.get_running_loop()
        self._reported_at = self._loop.time()

    @property
    def job_id(self) -> str:
        return self._work.job_id

    @property
    def trace_id(self) -> str:
        return self._work.trace_id

    async def progress(self, percent: float) -> None:
        await self._msg.in_progress()
        await self.report(AttemptProgressed, percent=max(0.0, min(100.0, percent)))

    async def report(self, event: type[BaseModel], **fields: JsonValue) -> None:
        """Publish one report of this attempt; returns once it is stored."""
        message = event(
            job_id=self._work.job_id,
            attempt=self.attempt,
            node=self._node,
            trace_id=self.trace_id,
            **fields,
        )
        await self._js.publish(
            subjects.job_event_subject(self._work.job_id), message.model_dump_json().encode()
        )
        self._reported_at = self._loop.time()

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
                await self.report(AttemptAlive)
            except (NatsError, JetStreamError, TimeoutError) as exc:
                _log.warning(
                    "job.keep_alive_lost",
                    job_id=self.job_id,
                    attempt=self.attempt,
                    error=str(exc) or type(exc).__name__,
                )


class Worker:
    """Pulls and runs work of the node's kinds, never more at once than its capacity."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        *,
        node: str,
        kinds: dict[str, JobKind[BaseModel, BaseModel]],
        capacity: int,
    ) -> None:
        self._js = js
        self._settings = settings
        self._node = node
        self._kinds = kinds
        self._slots = asyncio.Semaphore(capacity)
        self._loops: list[asyncio.Task[None]] = []
        self._pulls: list[JetStreamContext.PullSubscription] = []
        self._running: set[asyncio.Task[None]] = set()
        self._records: KeyValue | None = None

    async def start(self) -> None:
        self._records = await self._js.key_value(subjects.JOBS_BUCKET)
        for kind in self._kinds:
            await self._js.add_consumer(
                subjects.WORK_STREAM,
                ConsumerConfig(
                    durable_name=subjects.work_consumer(kind),
                    filter_subject=subjects.work_subject(kind),
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self._settings.job_timeout_s,
                    max_deliver=self._settings.max_attempts,
                    max_ack_pending=-1,
                ),
            )
            pull = await self._js.pull_subscribe_bind(
                subjects.work_consumer(kind), stream=subjects.WORK_STREAM
            )
            self._pulls.append(pull)
            self._loops.append(asyncio.create_task(self._pull(kind, pull), name=f"pull {kind}"))

    async def drain(self) -> None:
        """Stop pulling; let the attempts in flight finish."""
        for loop in self._loops:
            await cancel_and_wait(loop)
        for pull in self._pulls:  # an open pull subscription holds up the connection's drain
            with contextlib.suppress(NatsError):
                await pull.unsubscribe()
        if self._running:
            await asyncio.wait(self._running, timeout=self._settings.job_timeout_s)

    async def _pull(self, kind: str, pull: JetStreamContext.PullSubscription) -> None:
        while True:
            await self._slots.acquire()
            try:
                messages = await pull.fetch(1, timeout=_FETCH_WAIT_S)
            except (NatsTimeoutError, TimeoutError):
                self._slots.release()
                continue
            except (NatsError, JetStreamError) as exc:
                self._slots.release()
                _log.warning("node.fetch_failed", kind=kind, error=str(exc) or type(exc).__name__)
                await asyncio.sleep(_FETCH_WAIT_S)
                continue
            task = asyncio.create_task(self._attempt(kind, messages[0]))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _attempt(self, kind: str, msg: Msg) -> None:
        try:
            work = JobSubmitted.model_validate_json(msg.data)
        except ValidationError as exc:
            _log.error("node.unreadable_work", kind=kind, error=str(exc))
            await msg.term()
            return
        attempt = Attempt(self._js, msg, work, self._node)
        log = _log.bind(
            job_id=work.job_id,
            trace_id=work.trace_id,
            session_id=work.session_id,
            attempt=attempt.attempt,
        )
        try:
            refusal = await self._refusal(work.job_id, attempt.attempt)
            if refusal is not None:
                log.info("job.work_dropped", reason=refusal)
                await msg.term()
                return
            await attempt.report(AttemptStarted)
            log.info("job.attempt_started", kind=kind)
            try:
                data = await self._run(kind, work, attempt)
                # Stored, a result no client accepts would never be delivered.
                refuse_oversized_deliver(
                    self._settings.max_frame_bytes,
                    delivery_id=work.job_id + TERMINAL_SUFFIX,
                    kind="result",
                    job_id=work.job_id,
                    data=data,
                )
            except Exception as exc:
                failure = _failure_message(exc)
                log.warning("job.attempt_failed", error=failure)
                await attempt.report(AttemptFailedEvent, message=failure)
                await (msg.nak() if attempt.attempt < self._settings.max_attempts else msg.term())
                return
            await attempt.report(AttemptSucceeded, data=data)
            await msg.ack_sync()
            log.info("job.attempt_succeeded")
        except (NatsError, JetStreamError, TimeoutError) as exc:
            # Unreported or unacked: JetStream gives the work to a node again after ack_wait.
            log.warning("job.attempt_unreported", error=str(exc) or type(exc).__name__)

    async def _run(self, kind: str, work: JobSubmitted, attempt: Attempt) -> JsonValue:
        """The handler's result, the attempt kept alive while it runs (and only then: a
        beat after the attempt's last report would say a failed attempt still runs)."""
        keep_alive = asyncio.create_task(attempt.keep_alive(self._settings.job_timeout_s / 3))
        try:
            return await self._kinds[kind](work.payload, attempt)
        finally:
            await cancel_and_wait(keep_alive)

    async def _refusal(self, job_id: str, attempt: int) -> str | None:
        """Why the job's record says not to run this attempt (None: run it). A record not
        found or not readable does not stop it: a replica may not have the record yet, and
        the ledger fences what the attempt reports anyway."""
        assert self._records is not None
        try:
            entry = await self._records.get(job_id)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        try:
            record = JobRecord.model_validate_json(entry.value)
        except ValidationError as exc:
            _log.error("node.unreadable_job_record", job_id=job_id, error=str(exc))
            return None
        return record.refuses(attempt)
