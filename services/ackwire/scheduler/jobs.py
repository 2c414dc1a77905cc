"""The scheduler's part in jobs: every job's timer, and the receipts of their results.

The scheduler is the jobs' supervisor, not a hop on their way: a gateway stores
a job, a node takes it from the store and stores its result for the session
(see `ackwire.node.worker`). Two FastStream pull subscribers, acked by hand
(`AckPolicy.MANUAL`: FastStream's default would terminate a message whose
handler raised, and a plain `ack()` is not confirmed by the server), each
handling many messages at once (one job never waits for another):

- **job timers** (`ACKWIRE_JOBS`, beside the nodes' consumers of the same
  messages): each delivery of a job's message is its timer firing. It is
  nak'ed with the delay the ledger asks for, so the timer is JetStream's own:
  durable, shared by every scheduler replica, surviving a restart. It ends
  when the job's message is withdrawn: by the node that stored the job's
  result, or by the timer itself when it ended the job (`no_capacity`, or
  `failed` for a node gone silent), after storing the error.
- **receipts** of terminal deliveries: noted on the job's record.

A timer or a receipt whose handling the bus interrupted (a NATS failover)
comes back soon; the ledger then asks again for what is left to do, and the
store dedupes a delivery stored twice by its id.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import structlog
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsMessage, PullSub
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import Error as JetStreamError
from prometheus_client import Counter
from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.broker import ServiceBroker
from ackwire.bus.models import Receipt
from ackwire.bus.session_queue import SessionQueue
from ackwire.errors import BusError, ConflictError
from ackwire.jobs.ledger import CheckAt, Ignore, JobLedger, ResultReceipted, TimerFired
from ackwire.jobs.messages import TERMINAL_SUFFIX, JobSubmitted, StoredJob
from ackwire.jobs.records import RECEIPTS_TO, JobRecords
from ackwire.settings import Settings
from ackwire.tracing import span

#: A handler takes milliseconds; a message a dead replica had pulled comes back after this.
_HANDLER_ACK_WAIT_S = 5.0
#: How soon a message whose handling the bus interrupted comes back.
_RETRY_S = 0.5
#: Messages each subscriber handles at once.
_CONCURRENCY = 64

_log = structlog.get_logger("ackwire.scheduler")

TIMERS = Counter(
    "ackwire_scheduler_job_timers_total",
    "Job timers checked with the ledger: rearmed (the job goes on) or stopped (it is over,"
    " ended by this timer or before; the jobs a timer ended are ackwire_jobs_ended_total here)",
    ["outcome"],
)
RECEIPTS_NOTED = Counter(
    "ackwire_scheduler_receipts_noted_total",
    "Receipts of jobs' results and errors noted on their records (once each), by outcome",
    ["outcome"],
)


class JobSupervisor:
    def __init__(self, settings: Settings, bus: ServiceBroker) -> None:
        self._ledger = JobLedger.from_settings(settings)
        self._records: JobRecords | None = None
        broker = bus.broker
        broker.subscriber(
            subjects.JOB_SUBJECTS,
            stream=JStream(subjects.JOBS_STREAM, declare=False),  # provisioned by us
            durable="scheduler",
            config=ConsumerConfig(ack_wait=_HANDLER_ACK_WAIT_S, max_deliver=-1),
            pull_sub=PullSub(batch_size=_CONCURRENCY, timeout=5.0),
            max_workers=_CONCURRENCY,
            ack_policy=AckPolicy.MANUAL,
        )(self._on_timer)
        broker.subscriber(
            subjects.receipts_of(RECEIPTS_TO),
            stream=JStream(subjects.RECEIPTS_STREAM, declare=False),
            durable="scheduler-receipts",
            config=ConsumerConfig(ack_wait=_HANDLER_ACK_WAIT_S, max_deliver=-1),
            pull_sub=PullSub(batch_size=_CONCURRENCY, timeout=5.0),
            max_workers=_CONCURRENCY,
            ack_policy=AckPolicy.MANUAL,
        )(self._on_receipt)

    async def bind(self, nc: Client, js: JetStreamContext, queue: SessionQueue) -> None:
        """Called once connected, before the subscribers start."""
        kv = await js.key_value(subjects.JOBS_BUCKET)
        self._records = JobRecords(nc, kv, queue, self._ledger)

    async def _on_timer(self, msg: NatsMessage) -> None:
        assert self._records is not None
        try:
            job = JobSubmitted.model_validate_json(msg.body)
        except ValidationError as exc:
            _log.error("job.unreadable", error=str(exc))
            await msg.reject()
            return
        log = _log.bind(job_id=job.job_id, trace_id=job.trace_id, session_id=job.session_id)
        metadata = msg.raw_message.metadata
        deadline = self._ledger.pending_deadline(job.submitted_at.timestamp())
        if metadata.num_delivered == 1 and time.time() < deadline:
            # A job's first sight needs no read: nothing of it can be due before this.
            await msg.nack(delay=deadline - time.time())
            return
        stored = StoredJob.of(job, msg.raw_message)
        with span("ackwire.timer", stored.traceparent, trace_id=job.trace_id, job_id=job.job_id):
            await self._timer_fired(msg, stored, log)

    async def _timer_fired(
        self, msg: NatsMessage, stored: StoredJob, log: FilteringBoundLogger
    ) -> None:
        assert self._records is not None
        job = stored.job
        async with _retried_soon(msg, log):
            applied = await self._records.apply(job.job_id, TimerFired(), log, stored=stored)
            check = None if applied is None else _check_at(applied.outcome.actions)
            if check is None:  # the job ended, and its message is withdrawn: tidy up
                await msg.ack()
            else:
                await msg.nack(delay=max(0.1, check.at - time.time()))
            TIMERS.labels(outcome="stopped" if check is None else "rearmed").inc()

    async def _on_receipt(self, msg: NatsMessage) -> None:
        assert self._records is not None
        try:
            receipt = Receipt.model_validate_json(msg.body)
        except ValidationError as exc:
            _log.error("job.unreadable_receipt", error=str(exc))
            await msg.reject()
            return
        job_id = receipt.message_id.removesuffix(TERMINAL_SUFFIX)
        log = _log.bind(job_id=job_id, session_id=receipt.session_id, outcome=receipt.outcome)
        async with _retried_soon(msg, log):
            applied = await self._records.apply(job_id, ResultReceipted(receipt.outcome), log)
            record = None if applied is None else applied.outcome.record
            if applied is not None and not any(
                isinstance(action, Ignore) for action in applied.outcome.actions
            ):
                RECEIPTS_NOTED.labels(outcome=receipt.outcome).inc()  # a repeat is ignored
            if record is not None and record.receipt == receipt.outcome:
                with span(
                    "ackwire.receipt",
                    record.traceparent,
                    trace_id=record.trace_id,
                    job_id=job_id,
                    outcome=receipt.outcome,
                ):
                    log.info("job.result_receipted", trace_id=record.trace_id)
            await msg.ack_sync()


def _check_at(actions: tuple[object, ...]) -> CheckAt | None:
    return next((a for a in actions if isinstance(a, CheckAt)), None)


@contextlib.asynccontextmanager
async def _retried_soon(msg: NatsMessage, log: FilteringBoundLogger) -> AsyncIterator[None]:
    """Handle `msg` in the block; if the bus fails meanwhile (a NATS failover), or the job's
    record kept changing, have the message back in a moment, when the ledger asks again for
    what is left to do. (A nak lost too brings it back after the consumer's ack wait.)"""
    try:
        with bus_errors("handling a job's timer or receipt"):
            yield
    except (BusError, ConflictError) as exc:
        log.warning("job.handling_interrupted", error=str(exc))
        with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
            await msg.nack(delay=_RETRY_S)
