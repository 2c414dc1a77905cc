"""Jobs' records on the bus: the ledger's I/O, shared by every node and scheduler.

An input for a job (`JobRecords.apply`) reads the job's record, feeds the
ledger, writes the new record by compare-and-set and, only if that write won,
carries out what the ledger asked for: store a delivery for the job's session,
withdraw the job's message. Of two writers racing on one version of a record
(a node's result and the scheduler's timer), the loser reads the winner's
record and applies its input to that, so the ledger, not the race, decides.

A job's record is first written when something happened to it, most often
its first attempt's start: until then the job's message in the jobs stream is
all there is of it, and a record read finds nothing and starts from that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Histogram
from pydantic import JsonValue
from structlog.typing import FilteringBoundLogger

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.deletes import delete_message
from ackwire.bus.models import Delivery
from ackwire.bus.session_queue import SessionQueue
from ackwire.errors import JobChangedError
from ackwire.jobs.ledger import (
    DeliverError,
    DeliverProgress,
    DeliverResult,
    Ignore,
    JobInput,
    JobLedger,
    JobRecord,
    JobState,
    Outcome,
    WithdrawJob,
)
from ackwire.jobs.messages import TERMINAL_SUFFIX, StoredJob

#: Who hears the receipt of a job's terminal delivery: the scheduler notes it on the record.
RECEIPTS_TO = "scheduler"

# Counted where the record was written: by whichever node or scheduler decided.
ATTEMPTS_STARTED = Counter(
    "ackwire_job_attempts_started_total", "Attempts a node was granted (a job running again counts)"
)
JOBS_ENDED = Counter("ackwire_jobs_ended_total", "Jobs that ended, by their final state", ["state"])
JOB_SECONDS = Histogram(
    "ackwire_job_duration_seconds",
    "From a job's submit to its end being recorded, by final state",
    ["state"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
_MAX_CAS_RETRIES = 10


@dataclass(frozen=True, slots=True)
class Version:
    """A job's record as last read or written."""

    record: JobRecord
    revision: int
    """Its KV revision; 0 for a record nothing was written of yet."""


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: Outcome
    version: Version


class JobRecords:
    def __init__(self, nc: Client, kv: KeyValue, queue: SessionQueue, ledger: JobLedger) -> None:
        self._nc = nc
        self._kv = kv
        self._queue = queue
        self._ledger = ledger

    async def apply(
        self,
        job_id: str,
        event: JobInput,
        log: FilteringBoundLogger,
        *,
        stored: StoredJob | None = None,
        known: Version | None = None,
    ) -> Applied | None:
        """Apply `event` to the job's record and carry out the outcome; `None` for a job
        with no record and no `stored` job to start one from (it expired, or never was).

        `known` is the record as this caller last wrote it, to write on without reading
        it first (if it moved on since, it is read). Raises `BusError`, or
        `JobChangedError` when the record changed under every write tried."""
        with bus_errors(f"applying {type(event).__name__} to job {job_id}"):
            for _ in range(_MAX_CAS_RETRIES):
                version = known if known is not None else await self._read(job_id, stored)
                known = None
                if version is None:
                    log.warning("job.input_for_unknown_job", input=type(event).__name__)
                    return None
                outcome = self._ledger.apply(version.record, event, time.time())
                if outcome.record != version.record:  # else ignored, or a repeat
                    try:
                        written = await self._write(outcome.record, version)
                    except KeyWrongLastSequenceError:
                        continue  # the record moved on under us: read it again
                    _log_state(version.record, written.record, log)
                    version = written
                await self._carry_out(outcome, version.revision, log)
                return Applied(outcome, version)
        raise JobChangedError(f"job {job_id}: its record kept changing")

    async def _read(self, job_id: str, stored: StoredJob | None) -> Version | None:
        try:
            entry = await self._kv.get(job_id)
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value is not None:
            return Version(JobRecord.model_validate_json(entry.value), entry.revision or 0)
        if stored is None:
            return None
        job = stored.job
        fresh = self._ledger.submitted(
            job_id=job.job_id,
            session_id=job.session_id,
            user=job.user,
            kind=job.kind,
            trace_id=job.trace_id,
            job_seq=stored.seq,
            at=job.submitted_at.timestamp(),
            traceparent=stored.traceparent,
        )
        return Version(fresh, 0)

    async def _write(self, record: JobRecord, over: Version) -> Version:
        value = record.model_dump_json().encode()
        if over.revision == 0:
            revision = await self._kv.create(record.job_id, value)
        else:
            revision = await self._kv.update(record.job_id, value, last=over.revision)
        return Version(record, revision)

    async def _carry_out(self, outcome: Outcome, revision: int, log: FilteringBoundLogger) -> None:
        """Store what the outcome delivers, then withdraw what it withdraws (in that order:
        a job's message goes only once its terminal delivery is stored)."""
        record = outcome.record
        for action in outcome.actions:
            match action:
                case DeliverResult(data=data):
                    await self._deliver(record, "result", data, log)
                case DeliverError(code=code, message=message):
                    await self._deliver(record, "error", {"code": code, "message": message}, log)
                case DeliverProgress(percent=percent):
                    # One progress report is one revision of the record: a repeat is deduped.
                    progress_id = f"{record.job_id}:progress:{revision}"
                    await self._deliver(record, "progress", {"percent": percent}, log, progress_id)
                case WithdrawJob(seq=seq):
                    there = await delete_message(self._nc, subjects.JOBS_STREAM, seq)
                    log.debug("job.withdrawn", seq=seq, was_there=there)
                case Ignore(reason=reason):
                    log.info("job.input_ignored", reason=reason)
                case _:
                    pass  # the caller's: when to check again, whether to run the handler

    async def _deliver(
        self,
        record: JobRecord,
        kind: Literal["result", "error", "progress"],
        data: JsonValue,
        log: FilteringBoundLogger,
        delivery_id: str | None = None,
    ) -> None:
        delivery = Delivery(
            id=record.job_id + TERMINAL_SUFFIX if delivery_id is None else delivery_id,
            kind=kind,
            session_id=record.session_id,
            user=record.user,
            receipt_to=None if kind == "progress" else RECEIPTS_TO,
            job_id=record.job_id,
            trace_id=record.trace_id,
            traceparent=record.traceparent,
            data=data,
        )
        seq = await self._queue.put(delivery)
        # Stored for the session, not delivered: only the client's ack makes it so.
        (log.debug if kind == "progress" else log.info)(
            "job.queued_for_session", kind=kind, id=delivery.id, seq=seq
        )


def _log_state(before: JobRecord, after: JobRecord, log: FilteringBoundLogger) -> None:
    """Log (and count) a change of the job's state, as written."""
    running = after.state is JobState.RUNNING
    if running and (before.state is not JobState.RUNNING or after.attempt != before.attempt):
        ATTEMPTS_STARTED.inc()  # a newer attempt replacing one thought lost counts too
    if after.state is before.state:
        return
    if after.state.terminal:
        JOBS_ENDED.labels(state=after.state.value).inc()
        if after.submitted_at is not None:
            JOB_SECONDS.labels(state=after.state.value).observe(time.time() - after.submitted_at)
    (log.info if after.state.terminal else log.debug)(
        "job.state", state=after.state.value, was=before.state.value, attempt=after.attempt
    )
