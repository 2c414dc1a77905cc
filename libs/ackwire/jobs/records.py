"""Jobs' records on the bus: the ledger's I/O, shared by every node and scheduler.

A job's record is the last message on its record subject in the jobs stream,
beside its work (`ackwire.bus.subjects`), and is written by compare-and-set:
a publish that expects the subject's last sequence to be the one it read (0:
no record yet). An input for a job (`JobRecords.apply`) feeds the ledger,
writes the new record and, only if that write won, carries out what the
ledger asked for: store a delivery for the job's session, withdraw the job's
work. Of two writers racing on one version of a record (a node's result and
the scheduler's timer), the loser reads the winner's record and applies its
input to that, so the ledger, not the race, decides.

A job's record is first written when something happened to it, most often its
first attempt's start, which writes without reading: a record that is not
there yet needs no read to be created (`fresh`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from nats.aio.client import Client
from nats.js.api import Header
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Histogram
from pydantic import JsonValue
from structlog.typing import FilteringBoundLogger

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.deletes import delete_message
from ackwire.bus.models import Delivery
from ackwire.bus.session_queue import SessionQueue
from ackwire.errors import JobChangedError, SequenceConflictError
from ackwire.jobs.ledger import (
    DeliverError,
    DeliverResult,
    Ignore,
    JobInput,
    JobLedger,
    JobRecord,
    Outcome,
    WithdrawJob,
)
from ackwire.jobs.messages import TERMINAL_SUFFIX, StoredJob

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
    """The stream sequence of its message; 0 for a record nothing was written of yet."""


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: Outcome
    version: Version


class JobRecords:
    def __init__(self, nc: Client, queue: SessionQueue, ledger: JobLedger) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._queue = queue
        self._ledger = ledger

    def fresh(self, stored: StoredJob) -> Version:
        """The record of a job nothing happened to yet, to write without reading first
        (if a record is there after all, the write fails and the record is read)."""
        job = stored.job
        record = self._ledger.submitted(
            job_id=job.job_id,
            session_id=job.session_id,
            user=job.user,
            kind=job.kind,
            trace_id=job.trace_id,
            job_seq=stored.seq,
            at=job.submitted_at.timestamp(),
            traceparent=stored.traceparent,
        )
        return Version(record, 0)

    async def apply(
        self,
        stored: StoredJob,
        event: JobInput,
        log: FilteringBoundLogger,
        *,
        known: Version | None = None,
    ) -> Applied:
        """Apply `event` to the job's record and carry out the outcome.

        `known` is the record as this caller last wrote it (or `fresh`), to write on
        without reading it first (if it moved on since, it is read). Raises `BusError`,
        or `JobChangedError` when the record changed under every write tried."""
        subject = subjects.record_subject(stored.job.kind, stored.job.job_id)
        written_before = known is not None and known.revision > 0
        for _ in range(_MAX_CAS_RETRIES):
            version = known if known is not None else await self.read(stored)
            known = None
            if written_before and version.revision == 0:
                # Records are never deleted: this one outlived the retention (the job's
                # work did too). Nothing is left to decide; starting afresh would drop
                # the input as another attempt's, or loop.
                log.warning("job.record_expired", input=type(event).__name__)
                return Applied(Outcome(version.record, (Ignore("its record expired"),)), version)
            outcome = self._ledger.apply(version.record, event, time.time())
            if outcome.record != version.record:  # else ignored, or a repeat
                try:
                    written = await self._write(subject, outcome.record, version)
                except SequenceConflictError:
                    continue  # the record moved on under us: read it again
                _log_state(version.record, written.record, log)
                version = written
            await self._carry_out(outcome, log)
            return Applied(outcome, version)
        raise JobChangedError(f"job {stored.job.job_id}: its record kept changing")

    async def read(self, stored: StoredJob) -> Version:
        """The job's record as the stream's leader has it (a replica may lag behind a
        write), or `fresh` if none was written yet. Raises `BusError`."""
        subject = subjects.record_subject(stored.job.kind, stored.job.job_id)
        with bus_errors(f"reading the record of {stored.job.job_id}"):
            try:
                msg = await self._js.get_msg(subjects.JOBS_STREAM, subject=subject)
            except NotFoundError:
                return self.fresh(stored)
        return Version(JobRecord.model_validate_json(msg.data or b""), msg.seq or 0)

    async def _write(self, subject: str, record: JobRecord, over: Version) -> Version:
        with bus_errors(f"writing the record of {record.job_id}"):
            ack = await self._js.publish(
                subject,
                record.model_dump_json().encode(),
                headers={Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(over.revision)},
            )
        return Version(record, ack.seq)

    async def _carry_out(self, outcome: Outcome, log: FilteringBoundLogger) -> None:
        """Store what the outcome delivers, then withdraw what it withdraws (in that order:
        a job's work goes only once its terminal delivery is stored)."""
        record = outcome.record
        for action in outcome.actions:
            match action:
                case DeliverResult(data=data):
                    await self._deliver(record, "result", data, log)
                case DeliverError(code=code, message=message):
                    await self._deliver(record, "error", {"code": code, "message": message}, log)
                case WithdrawJob(seq=seq):
                    with bus_errors(f"withdrawing job {record.job_id}"):
                        there = await delete_message(self._nc, subjects.JOBS_STREAM, seq)
                    log.debug("job.withdrawn", seq=seq, was_there=there)
                case Ignore(reason=reason):
                    log.info("job.input_ignored", reason=reason)
                case _:
                    pass  # the caller's: when to check again, whether to run the handler

    async def _deliver(
        self,
        record: JobRecord,
        kind: Literal["result", "error"],
        data: JsonValue,
        log: FilteringBoundLogger,
    ) -> None:
        delivery = Delivery(
            id=record.job_id + TERMINAL_SUFFIX,
            kind=kind,
            session_id=record.session_id,
            user=record.user,
            job_id=record.job_id,
            trace_id=record.trace_id,
            traceparent=record.traceparent,
            data=data,
        )
        seq = await self._queue.put(delivery)
        # Stored for the session, not delivered: only the client's ack makes it so.
        log.debug("job.queued_for_session", kind=kind, id=delivery.id, seq=seq)


def _log_state(before: JobRecord, after: JobRecord, log: FilteringBoundLogger) -> None:
    """Log (and count) a change of the job's state, as written."""
    if after.attempt != before.attempt:
        ATTEMPTS_STARTED.inc()
    if after.state is before.state:
        return
    if after.state.terminal:
        JOBS_ENDED.labels(state=after.state.value).inc()
        JOB_SECONDS.labels(state=after.state.value).observe(time.time() - after.submitted_at)
    (log.info if after.state.terminal else log.debug)(
        "job.state", state=after.state.value, was=before.state.value, attempt=after.attempt
    )
