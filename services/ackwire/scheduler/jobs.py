"""The scheduler's job handling: the ledger's I/O.

Two FastStream pull subscribers, acked by hand (`AckPolicy.MANUAL`: FastStream's
default would terminate a message whose handler raised, and a plain `ack()` is
not confirmed by the server):

- **stored jobs** (`ACKWIRE_JOBS`): the first delivery of a job creates its
  record; every later delivery is the job's timer. Each dispatches the job's
  work while the ledger asks for it (until the store confirmed it). The
  message is nak'ed with the delay the ledger asks for, so the timer is
  JetStream's own: durable, shared by every scheduler replica, surviving a
  restart. It is acked (gone) once the job is terminal.
- **attempt reports** (`ACKWIRE_JOB_EVENTS`): what nodes report, applied to
  the record.

Records live in KV and are written by compare-and-set, so two replicas never
both act on one version of a job. An input's outcome is recorded first and
carried out after, by the writer that won only: of a timer and a result racing,
the loser reads the winner's record and its input is ignored. The input is
acked once its actions are done; a crash in between brings it back, the ledger
asks for the same actions again, and the store dedupes the delivery by its id.
An input whose handling the bus interrupted (a NATS failover) comes back soon.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Literal

import structlog
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsMessage, PullSub
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import Error as JetStreamError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import JsonValue, TypeAdapter, ValidationError
from structlog.typing import FilteringBoundLogger

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.broker import ServiceBroker
from ackwire.bus.deletes import delete_message
from ackwire.bus.models import Delivery, Receipt
from ackwire.bus.session_queue import SessionQueue
from ackwire.errors import BusError
from ackwire.jobs.ledger import (
    AttemptFailed,
    CheckAt,
    DeliverError,
    DeliverProgress,
    DeliverResult,
    DispatchWork,
    Ignore,
    JobInput,
    JobLedger,
    JobRecord,
    KeptAlive,
    Outcome,
    Progressed,
    ResultReceipted,
    Started,
    Succeeded,
    TimerFired,
    WithdrawWork,
    WorkDispatched,
)
from ackwire.jobs.messages import (
    TERMINAL_SUFFIX,
    AttemptAlive,
    AttemptFailedEvent,
    AttemptProgressed,
    AttemptStarted,
    AttemptSucceeded,
    JobEvent,
    JobSubmitted,
)
from ackwire.settings import Settings

_MAX_CAS_RETRIES = 10
#: The scheduler's name in receipts.
PRODUCER = "scheduler"
#: A handler takes milliseconds; a message a dead replica had pulled comes back after this.
_HANDLER_ACK_WAIT_S = 5.0
#: How soon a message whose handling the bus interrupted comes back.
_RETRY_S = 0.5
_events: TypeAdapter[JobEvent] = TypeAdapter(JobEvent)

_log = structlog.get_logger("ackwire.scheduler")


class JobSupervisor:
    def __init__(self, settings: Settings, bus: ServiceBroker) -> None:
        self._settings = settings
        self._ledger = JobLedger(
            pending_timeout=settings.pending_timeout_s,
            job_timeout=settings.job_timeout_s,
            max_attempts=settings.max_attempts,
        )
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._queue: SessionQueue | None = None
        broker = bus.broker
        broker.subscriber(
            subjects.JOB_SUBMITTED,
            stream=JStream(subjects.JOBS_STREAM, declare=False),  # provisioned by us
            durable="scheduler",
            config=ConsumerConfig(ack_wait=_HANDLER_ACK_WAIT_S, max_deliver=-1),
            pull_sub=PullSub(batch_size=16, timeout=1.0),
            ack_policy=AckPolicy.MANUAL,
        )(self._on_stored_job)
        broker.subscriber(
            subjects.JOB_EVENTS,
            stream=JStream(subjects.JOB_EVENTS_STREAM, declare=False),
            durable="scheduler-events",
            config=ConsumerConfig(ack_wait=_HANDLER_ACK_WAIT_S, max_deliver=-1),
            pull_sub=PullSub(batch_size=64, timeout=1.0),
            ack_policy=AckPolicy.MANUAL,
        )(self._on_report)
        broker.subscriber(
            subjects.receipts_of(PRODUCER),
            stream=JStream(subjects.RECEIPTS_STREAM, declare=False),
            durable="scheduler-receipts",
            config=ConsumerConfig(ack_wait=_HANDLER_ACK_WAIT_S, max_deliver=-1),
            pull_sub=PullSub(batch_size=64, timeout=1.0),
            ack_policy=AckPolicy.MANUAL,
        )(self._on_receipt)

    async def bind(self, nc: Client, js: JetStreamContext, queue: SessionQueue) -> None:
        """Called once connected, before the subscribers start."""
        self._nc = nc
        self._js = js
        self._kv = await js.key_value(subjects.JOBS_BUCKET)
        self._queue = queue

    async def _on_stored_job(self, msg: NatsMessage) -> None:
        try:
            job = JobSubmitted.model_validate_json(msg.body)
        except ValidationError as exc:
            _log.error("job.unreadable", error=str(exc))
            await msg.reject()
            return
        log = _log.bind(job_id=job.job_id, trace_id=job.trace_id, session_id=job.session_id)
        async with _retried_soon(msg, log):
            outcome = await self._apply(job.job_id, TimerFired(), log, new=job)
            if outcome is None or outcome.record.state.terminal:
                await msg.ack_sync()
                return
            if DispatchWork() in outcome.actions:
                await self._dispatch(job, log)
            check = next((a for a in outcome.actions if isinstance(a, CheckAt)), None)
            delay = self._settings.pending_timeout_s if check is None else check.at - time.time()
            await msg.nack(delay=max(0.1, delay))

    async def _on_report(self, msg: NatsMessage) -> None:
        try:
            event = _events.validate_json(msg.body)
        except ValidationError as exc:
            _log.error("job.unreadable_report", error=str(exc))
            await msg.reject()
            return
        log = _log.bind(
            job_id=event.job_id, trace_id=event.trace_id, node=event.node, attempt=event.attempt
        )
        async with _retried_soon(msg, log):
            await self._apply(event.job_id, _ledger_input(event), log, report_seq=_stream_seq(msg))
            await msg.ack_sync()

    async def _on_receipt(self, msg: NatsMessage) -> None:
        try:
            receipt = Receipt.model_validate_json(msg.body)
        except ValidationError as exc:
            _log.error("job.unreadable_receipt", error=str(exc))
            await msg.reject()
            return
        job_id = receipt.message_id.removesuffix(TERMINAL_SUFFIX)
        log = _log.bind(job_id=job_id, session_id=receipt.session_id, outcome=receipt.outcome)
        async with _retried_soon(msg, log):
            outcome = await self._apply(job_id, ResultReceipted(receipt.outcome), log)
            if outcome is not None and outcome.record.receipt == receipt.outcome:
                log.info("job.result_receipted")
            await msg.ack_sync()

    async def _apply(
        self,
        job_id: str,
        event: JobInput,
        log: FilteringBoundLogger,
        *,
        new: JobSubmitted | None = None,
        report_seq: int = 0,
    ) -> Outcome | None:
        """Read the record, apply `event`, write the record (CAS), carry out the actions.

        `None` for a report about a job with no record (expired, or never stored)."""
        assert self._kv is not None
        for _ in range(_MAX_CAS_RETRIES):
            now = time.time()
            try:
                entry = await self._kv.get(job_id)
            except KeyNotFoundError:
                entry = None
            if entry is None or entry.value is None:
                if new is None:
                    log.warning("job.report_for_unknown_job")
                    return None
                outcome = self._ledger.submitted(
                    job_id=new.job_id,
                    session_id=new.session_id,
                    user=new.user,
                    kind=new.kind,
                    trace_id=new.trace_id,
                    now=now,
                )
                try:
                    await self._kv.create(job_id, outcome.record.model_dump_json().encode())
                except KeyWrongLastSequenceError:
                    continue  # another replica created it first: apply to theirs
                log.info("job.pending", kind=new.kind)
                return outcome
            record = JobRecord.model_validate_json(entry.value)
            log = log.bind(session_id=record.session_id)
            outcome = self._ledger.apply(record, event, now)
            if outcome.record != record:  # else nothing to record: ignored, or a repeat
                try:
                    await self._kv.update(
                        job_id, outcome.record.model_dump_json().encode(), last=entry.revision
                    )
                except KeyWrongLastSequenceError:
                    continue  # the record moved on under us: read it again
                if outcome.record.state is not record.state:
                    log.info("job.state", state=outcome.record.state.value, was=record.state.value)
            await self._carry_out(outcome, report_seq, log)
            return outcome
        raise RuntimeError(f"job {job_id}: the record kept changing; will retry on redelivery")

    async def _dispatch(self, job: JobSubmitted, log: FilteringBoundLogger) -> None:
        """Store the job's work for nodes, and note in the ledger that the store has it.

        The work's id is the job's, so a repeat (the answer to the first was lost) is
        stored once and answered with the first one's sequence. Attempts after the
        first are JetStream's redeliveries of this one message."""
        assert self._js is not None
        ack = await self._js.publish(
            subjects.work_subject(job.kind), job.to_bytes(), headers={"Nats-Msg-Id": job.job_id}
        )
        await self._apply(job.job_id, WorkDispatched(ack.seq), log)

    async def _carry_out(
        self, outcome: Outcome, report_seq: int, log: FilteringBoundLogger
    ) -> None:
        assert self._queue is not None
        record = outcome.record
        for action in outcome.actions:
            delivery: Delivery | None = None
            match action:
                case DeliverResult(data=data):
                    delivery = _delivery(record, "result", data, record.job_id + TERMINAL_SUFFIX)
                case DeliverError(code=code, message=message):
                    data = {"code": code, "message": message}
                    delivery = _delivery(record, "error", data, record.job_id + TERMINAL_SUFFIX)
                case DeliverProgress(percent=percent):
                    progress_id = f"{record.job_id}:progress:{report_seq}"
                    delivery = _delivery(record, "progress", {"percent": percent}, progress_id)
                case WithdrawWork(seq=seq):
                    assert self._nc is not None
                    there = await delete_message(self._nc, subjects.WORK_STREAM, seq)
                    log.info("job.work_withdrawn", seq=seq, was_there=there)
                case Ignore(reason=reason):
                    log.info("job.input_ignored", reason=reason)
            if delivery is not None:
                seq = await self._queue.put(delivery)
                # Stored for the session, not delivered: only the client's ack makes it so.
                log.info("job.queued_for_session", kind=delivery.kind, id=delivery.id, seq=seq)


@contextlib.asynccontextmanager
async def _retried_soon(msg: NatsMessage, log: FilteringBoundLogger) -> AsyncIterator[None]:
    """Handle `msg` in the block; if the bus fails meanwhile (a NATS failover), have the
    message back in a moment, when the ledger asks again for what is left to do. (A nak
    lost too brings it back after the consumer's ack wait.)"""
    try:
        with bus_errors("handling a job's input"):
            yield
    except BusError as exc:
        log.warning("job.handling_interrupted", error=str(exc))
        with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
            await msg.nack(delay=_RETRY_S)


def _delivery(
    record: JobRecord,
    kind: Literal["result", "error", "progress"],
    data: JsonValue,
    delivery_id: str,
) -> Delivery:
    return Delivery(
        id=delivery_id,
        kind=kind,
        session_id=record.session_id,
        user=record.user,
        # The terminal delivery's receipt comes back to the ledger (`_on_receipt`).
        receipt_to=None if kind == "progress" else PRODUCER,
        job_id=record.job_id,
        trace_id=record.trace_id,
        data=data,
    )


def _ledger_input(event: JobEvent) -> JobInput:
    match event:
        case AttemptStarted():
            return Started(event.attempt, event.node)
        case AttemptProgressed():
            return Progressed(event.attempt, event.percent)
        case AttemptAlive():
            return KeptAlive(event.attempt)
        case AttemptSucceeded():
            return Succeeded(event.attempt, event.data)
        case AttemptFailedEvent():
            return AttemptFailed(event.attempt, event.message)


def _stream_seq(msg: NatsMessage) -> int:
    return int(msg.raw_message.metadata.sequence.stream)
