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
from datetime import datetime

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import Counter
from pydantic import ValidationError

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.direct_get import read_batch, read_one
from ackwire.bus.nodes import NodeDirectory
from ackwire.errors import BusError, ConflictError
from ackwire.jobs.ledger import CheckAt, JobLedger, TimerFired
from ackwire.jobs.messages import JobSubmitted, StoredJob
from ackwire.jobs.records import JobRecords
from ackwire.lifecycle import BackgroundTasks, cancel_and_wait
from ackwire.settings import Settings
from ackwire.tracing import span
from ackwire.wire.tracecontext import usable_or_none

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
        due_before = now - self._ledger.pending_timeout
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
                seq, stored_at = _position(msg)
                if stored_at > due_before:
                    return await self._checks_due(now)  # the rest is younger still
                self._cursor = seq + 1
                await self._check_soon(msg, seq)
            if read.complete:
                break
        await self._checks_due(now)

    async def _checks_due(self, now: float) -> None:
        assert self._nc is not None
        while self._due and self._due[0].at <= now:
            due = heapq.heappop(self._due)
            with bus_errors("reading a job's work"):
                msg = await read_one(self._nc, subjects.JOBS_STREAM, due.seq)
            if msg is not None:  # else withdrawn meanwhile: the job is over
                await self._check_soon(msg, due.seq)

    async def _check_soon(self, msg: Msg, seq: int) -> None:
        await self._room.acquire()
        self._checks.spawn(self._checked(msg, seq), name="job timer")

    async def _checked(self, msg: Msg, seq: int) -> None:
        try:
            await self._check(msg, seq)
        finally:
            self._room.release()

    async def _check(self, msg: Msg, seq: int) -> None:
        assert self._records is not None
        try:
            job = JobSubmitted.model_validate_json(msg.data)
        except ValidationError as exc:
            _log.error("job.unreadable", seq=seq, error=str(exc))
            return
        log = _log.bind(job_id=job.job_id, trace_id=job.trace_id, session_id=job.session_id)
        traceparent = usable_or_none((msg.headers or {}).get("traceparent"))
        stored = StoredJob(job, seq, traceparent)
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


def _position(msg: Msg) -> tuple[int, float]:
    """A message's stream sequence and when it was stored, from a direct get's headers."""
    headers = msg.headers or {}
    stored_at = _parse_timestamp(headers["Nats-Time-Stamp"])
    return int(headers["Nats-Sequence"]), stored_at


def _parse_timestamp(value: str) -> float:
    """JetStream's RFC 3339 UTC time (nanoseconds), as seconds since the epoch."""
    # datetime reads microseconds at most: the fraction is cut to six digits.
    whole, _, fraction = value.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(f"{whole}.{fraction[:6].ljust(6, '0')}+00:00")
    return stamp.timestamp()
