"""The scheduler's part in jobs: every job's timer, and nothing on a job's way.

A gateway stores a job; a node takes it from the store, asks the ledger, runs
it and stores its result for the session (`ackwire.node.worker`). The
scheduler supervises, and a job that goes well costs it nothing: its work
message is withdrawn (deleted) when it ends, long before its first deadline,
so the scheduler never even reads it.

What it reads is what outlived its pending timeout. The jobs stream keeps its
messages in store order, so each replica sweeps it from a cursor (every
`tick`, a batch read of the work subjects from the cursor up to the first
message too young to be due) and checks each job it passes with the ledger
(`TimerFired`): the job ends (`no_capacity`; `failed` when no node is left
to run its lost attempt), or it goes back on the replica's heap of checks due
later, at the time the ledger asks. A replica that starts (or restarts) sweeps
from the stream's first message, so every live job is checked again: nothing
is lost with a replica, and no consumer holds one pending message per job in
flight (that cost nats-server half again its CPU per job, docs/architecture.md).
Replicas check the same jobs independently; the record's compare-and-set
makes a second check harmless.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from prometheus_client import Counter
from pydantic import ValidationError

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.direct_get import read_batch
from ackwire.bus.nodes import NodeDirectory
from ackwire.errors import BusError, ConflictError
from ackwire.jobs.ledger import CheckAt, JobLedger, TimerFired
from ackwire.jobs.messages import JobSubmitted, StoredJob
from ackwire.jobs.records import JobRecords
from ackwire.lifecycle import BackgroundTasks, cancel_and_wait
from ackwire.settings import Settings
from ackwire.tracing import span

#: Work messages read per request of a sweep.
_SWEEP_BATCH = 256
#: Checks under way at once (each a few round trips).
_CHECKS_AT_ONCE = 64
#: How soon a check the bus interrupted comes again.
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


@dataclass(order=True, frozen=True, slots=True)
class _Due:
    at: float
    seq: int = field(compare=False)
    """The job's work message in the jobs stream."""


class JobTimers:
    def __init__(self, settings: Settings, nodes: NodeDirectory) -> None:
        self._ledger = JobLedger.from_settings(settings)
        self._nodes = nodes
        # Due jobs are found within a quarter of the pending timeout, and at most a second.
        self._tick = min(1.0, settings.pending_timeout_s / 4)
        self._nc: Client | None = None
        self._records: JobRecords | None = None
        self._cursor = 1
        """The next stream sequence the sweep looks at."""
        self._due: list[_Due] = []
        """Checks due later (a heap), one per job this replica saw still going on."""
        self._sweeping: asyncio.Task[None] | None = None
        self._checks = BackgroundTasks()
        self._room = asyncio.Semaphore(_CHECKS_AT_ONCE)

    async def start(self, nc: Client, records: JobRecords) -> None:
        self._nc = nc
        self._records = records
        self._sweeping = asyncio.create_task(self._sweep_forever(), name="job timers")

    async def drain(self) -> None:
        """Stop sweeping; let the checks under way finish (bounded). What this replica
        would have checked, any other replica (or this one, restarted) checks."""
        await cancel_and_wait(self._sweeping)
        try:
            async with asyncio.timeout(_DRAIN_S):
                await self._checks.finish()
        except TimeoutError:
            await self._checks.cancel()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self._sweep(time.time())
            except BusError as exc:
                _log.warning("scheduler.sweep_interrupted", error=str(exc))
            await asyncio.sleep(self._tick)

    async def _sweep(self, now: float) -> None:
        """Check every job whose pending deadline passed since the last sweep, then every
        job whose next check is due."""
        assert self._nc is not None
        while True:
            with bus_errors("sweeping the jobs' work"):
                read = await read_batch(
                    self._nc,
                    subjects.JOBS_STREAM,
                    subjects.WORK_SUBJECTS,
                    after=self._cursor - 1,
                    limit=_SWEEP_BATCH,
                )
            for msg in read.messages:
                seq = int((msg.headers or {})["Nats-Sequence"])
                stored = _stored(msg.data, msg.headers, seq)
                if stored is not None:
                    submitted_at = stored.job.submitted_at.timestamp()
                    if self._ledger.pending_deadline(submitted_at) > now:
                        return await self._checks_due(now)  # the rest is younger still
                    await self._check_soon(stored)
                self._cursor = seq + 1
            if read.complete:
                break
        await self._checks_due(now)

    async def _checks_due(self, now: float) -> None:
        assert self._nc is not None
        js = self._nc.jetstream()
        while self._due and self._due[0].at <= now:
            due = heapq.heappop(self._due)
            with bus_errors("reading a job's work"):
                try:
                    msg = await js.get_msg(subjects.JOBS_STREAM, due.seq, direct=True)
                except NotFoundError:
                    continue  # withdrawn meanwhile: the job is over
            stored = _stored(msg.data, msg.headers, due.seq)
            if stored is not None:
                await self._check_soon(stored)

    async def _check_soon(self, stored: StoredJob) -> None:
        await self._room.acquire()
        self._checks.spawn(self._checked(stored), name="job timer")

    async def _checked(self, stored: StoredJob) -> None:
        try:
            await self._check(stored)
        finally:
            self._room.release()

    async def _check(self, stored: StoredJob) -> None:
        assert self._records is not None
        job, seq, traceparent = stored.job, stored.seq, stored.traceparent
        log = _log.bind(job_id=job.job_id, trace_id=job.trace_id, session_id=job.session_id)
        served = self._nodes.payload_schema(job.kind) is not None
        with span("ackwire.timer", traceparent, trace_id=job.trace_id, job_id=job.job_id):
            try:
                applied = await self._records.apply(stored, TimerFired(served), log)
            except (BusError, ConflictError) as exc:
                # Interrupted (a NATS failover): the ledger asks again for what is left.
                log.warning("job.timer_interrupted", error=str(exc))
                heapq.heappush(self._due, _Due(time.time() + _RETRY_S, seq))
                return
        check = next((a for a in applied.outcome.actions if isinstance(a, CheckAt)), None)
        if check is not None:
            heapq.heappush(self._due, _Due(check.at, seq))
        TIMERS.labels(outcome="stopped" if check is None else "rearmed").inc()


def _stored(data: bytes | None, headers: dict[str, str] | None, seq: int) -> StoredJob | None:
    """The job a work message read from the stream holds (`None`, logged: unreadable)."""
    try:
        job = JobSubmitted.model_validate_json(data or b"")
    except ValidationError as exc:
        _log.error("job.unreadable", seq=seq, error=str(exc))
        return None
    return StoredJob.at(job, seq, headers)
