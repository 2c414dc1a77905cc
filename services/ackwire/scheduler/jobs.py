"""The scheduler's part in jobs: every job's timer, and nothing on a job's way.

A gateway stores a job; a node takes it from the store, asks the ledger, runs
it and stores its result for the session (`ackwire.node.worker`). The
scheduler supervises: it is the job timers' durable consumer of every job's
work message (beside the nodes' consumers of the same messages), and each
delivery of a job's message to it is the job's timer firing.

A job that goes well costs it one delivery it does not even answer: the
consumer's `ack_wait` is the pending timeout, so an unanswered first delivery
comes back by itself at the job's first deadline, and a job that ended before
that had its message withdrawn (deleted), so it never comes back. A delivery
that does come back is checked with the ledger: the job is ended
(`no_capacity`, or `failed` when no node is left to run its lost attempt), or
the message is nak'ed with the delay the ledger asks for. So the timer is
JetStream's own: durable, shared by every scheduler replica, surviving a
restart, with no in-process timer table.

The pull loop is plain nats-py, not a FastStream subscriber: FastStream's
per-message pipeline (dependency injection with a worker-thread hop, a
correlation id, a logging middleware) cost a third of the scheduler's CPU per
job when every job crossed it (docs/architecture.md, Jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import Error as JetStreamError
from prometheus_client import Counter
from pydantic import ValidationError

from ackwire.bus import subjects
from ackwire.bus.nodes import NodeDirectory
from ackwire.errors import BusError, ConflictError
from ackwire.jobs.ledger import CheckAt, JobLedger, TimerFired
from ackwire.jobs.messages import JobSubmitted, StoredJob
from ackwire.jobs.records import JobRecords
from ackwire.lifecycle import BackgroundTasks, cancel_and_wait
from ackwire.settings import Settings
from ackwire.tracing import span

#: Timers checked at once (each a few round trips): one job never waits for another's.
_CHECKS_AT_ONCE = 64
_FETCH_WAIT_S = 5.0
#: How soon a timer whose check the bus interrupted fires again.
_RETRY_S = 0.5
#: How long a stopping scheduler lets its checks under way finish.
_DRAIN_S = 5.0

_log = structlog.get_logger("ackwire.scheduler")

TIMERS = Counter(
    "ackwire_scheduler_job_timers_total",
    "Job timers checked with the ledger: rearmed (the job goes on) or stopped (it is over,"
    " ended by this timer or before; the jobs a timer ended are ackwire_jobs_ended_total here)",
    ["outcome"],
)


class JobTimers:
    def __init__(self, settings: Settings, nodes: NodeDirectory) -> None:
        self._settings = settings
        self._ledger = JobLedger.from_settings(settings)
        self._nodes = nodes
        self._records: JobRecords | None = None
        self._pulling: asyncio.Task[None] | None = None
        self._checks = BackgroundTasks()
        self._room = asyncio.Semaphore(_CHECKS_AT_ONCE)

    async def start(self, nc: Client, records: JobRecords) -> None:
        self._records = records
        js = nc.jetstream()
        await js.add_consumer(
            subjects.JOBS_STREAM,
            ConsumerConfig(
                durable_name=subjects.JOB_TIMERS_CONSUMER,
                filter_subject=subjects.WORK_SUBJECTS,
                ack_policy=AckPolicy.EXPLICIT,
                # A first delivery left unanswered comes back at the job's first deadline.
                ack_wait=self._settings.pending_timeout_s,
                max_deliver=-1,
                # Every job in flight holds one; the default 1,000 would stall the timers.
                max_ack_pending=-1,
            ),
        )
        pull = await js.pull_subscribe_bind(
            subjects.JOB_TIMERS_CONSUMER, stream=subjects.JOBS_STREAM
        )
        self._pulling = asyncio.create_task(self._pull(pull), name="job timers")

    async def drain(self) -> None:
        """Stop taking timers; let the checks under way finish (bounded). A timer not
        checked comes back to a replica (or to this one, restarted) after its ack wait."""
        await cancel_and_wait(self._pulling)
        try:
            async with asyncio.timeout(_DRAIN_S):
                await self._checks.finish()
        except TimeoutError:
            await self._checks.cancel()

    async def _pull(self, pull: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                batch = await pull.fetch(_CHECKS_AT_ONCE, timeout=_FETCH_WAIT_S)
            except (NatsTimeoutError, TimeoutError):
                continue
            except (NatsError, JetStreamError) as exc:
                _log.warning("scheduler.fetch_failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(_RETRY_S)
                continue
            for msg in batch:
                if self._first_sight_before_due(msg):
                    continue  # unanswered: it comes back at the job's first deadline
                await self._room.acquire()
                self._checks.spawn(self._checked(msg), name="job timer")

    def _first_sight_before_due(self, msg: Msg) -> bool:
        """A job's first delivery before its pending deadline needs nothing: nothing of
        it can be due before then. (The message's store time is the job's submit.)"""
        metadata = msg.metadata
        stored_at = metadata.timestamp.timestamp()
        return metadata.num_delivered == 1 and time.time() < self._ledger.pending_deadline(
            stored_at
        )

    async def _checked(self, msg: Msg) -> None:
        try:
            await self._check(msg)
        finally:
            self._room.release()

    async def _check(self, msg: Msg) -> None:
        assert self._records is not None
        try:
            job = JobSubmitted.model_validate_json(msg.data)
        except ValidationError as exc:
            _log.error("job.unreadable", error=str(exc))
            await msg.term()
            return
        log = _log.bind(job_id=job.job_id, trace_id=job.trace_id, session_id=job.session_id)
        stored = StoredJob.of(job, msg)
        served = self._nodes.payload_schema(job.kind) is not None
        with span("ackwire.timer", stored.traceparent, trace_id=job.trace_id, job_id=job.job_id):
            try:
                applied = await self._records.apply(stored, TimerFired(served), log)
            except (BusError, ConflictError) as exc:
                # Interrupted (a NATS failover): the ledger asks again for what is left.
                log.warning("job.timer_interrupted", error=str(exc))
                with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                    await msg.nak(delay=_RETRY_S)
                return
        check = next((a for a in applied.outcome.actions if isinstance(a, CheckAt)), None)
        with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
            # Lost, either answer comes back after the ack wait, and is checked again.
            if check is None:  # the job ended, and its message is withdrawn: tidy up
                await msg.ack()
            else:
                await msg.nak(delay=max(_RETRY_S, check.at - time.time()))
        TIMERS.labels(outcome="stopped" if check is None else "rearmed").inc()
