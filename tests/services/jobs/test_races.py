"""A node's result and the scheduler's timer racing on one job, forced into their worst
interleaving at the bus boundary: both read the same version of the job's record, and the
first to write it loses the compare-and-set."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats
import pytest
import structlog
from nats.js import JetStreamContext

from ackwire.bus import subjects
from ackwire.bus.provision import provision
from ackwire.bus.session_queue import SessionQueue
from ackwire.jobs.ledger import JobLedger, JobRecord, JobState, Succeeded
from ackwire.jobs.messages import TERMINAL_SUFFIX, JobSubmitted, StoredJob, new_job_id
from ackwire.jobs.records import JobRecords
from ackwire.scheduler.service import Scheduler
from ackwire.settings import Settings
from support.logs import LogWatch

T = TypeVar("T")
_GATE_WAIT_S = 10.0


class Rendezvous:
    """Holds the first call about `key` until a second one has returned; later calls pass."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._calls = 0
        self._second_returned = asyncio.Event()

    async def __call__(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        if key != self.key:
            return await call()
        self._calls += 1
        if self._calls == 1:
            async with asyncio.timeout(_GATE_WAIT_S):
                await self._second_returned.wait()
            return await call()
        try:
            return await call()
        finally:
            self._second_returned.set()


def gate(monkeypatch: pytest.MonkeyPatch, method: str, rendezvous: Rendezvous) -> None:
    """Gate JetStream's `method` (a read or a write of a message) by the subject it names."""
    real = getattr(JetStreamContext, method)

    async def gated(js: JetStreamContext, *args: Any, **kwargs: Any) -> Any:
        subject = kwargs["subject"] if "subject" in kwargs else args[0]
        return await rendezvous(subject, lambda: real(js, *args, **kwargs))

    monkeypatch.setattr(JetStreamContext, method, gated)


async def test_a_timer_and_a_result_racing_end_in_one_terminal_delivery_matching_the_ledger(
    job_settings: Settings, logs: LogWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = await nats.connect(job_settings.nats_url)
    scheduler = Scheduler(job_settings, name="scheduler-t", host="127.0.0.1")
    try:
        js = nc.jetstream()
        session_id = subjects.new_session_id()
        job_id = new_job_id(session_id, None)
        last = job_settings.max_attempts
        now = time.time()
        # The job's message, stored a minute ago: its timer is due at its first sight.
        job = JobSubmitted(
            job_id=job_id,
            session_id=session_id,
            user="alice",
            kind="echo",
            payload={},
            trace_id="t-race",
            submitted_at=datetime.fromtimestamp(now - 60, UTC),
        )
        await provision(js, job_settings)
        # The last attempt runs, and no node has served its kind for longer than the
        # ledger waits for one (the timer fails the job), while its node stores its result.
        ledger = JobLedger.from_settings(job_settings)
        ack = await js.publish(subjects.work_subject("echo", job_id), job.to_bytes())
        running = JobRecord(
            job_id=job_id,
            session_id=session_id,
            user="alice",
            kind="echo",
            trace_id="t-race",
            job_seq=ack.seq,
            submitted_at=now - 60,
            state=JobState.RUNNING,
            attempt=last,
            delivery=last,
            node="node-x",
            waiting_since=now - 60,
            unserved_since=now - ledger.unserved_grace - 1,
        )
        record_subject = subjects.record_subject("echo", job_id)
        await js.publish(record_subject, running.model_dump_json().encode())
        gate(monkeypatch, "get_msg", Rendezvous(record_subject))
        gate(monkeypatch, "publish", Rendezvous(record_subject))
        with structlog.contextvars.bound_contextvars(scheduler=scheduler.name):
            await scheduler.start()  # its timer reads the record, and waits for the node's read

        node = JobRecords(nc, SessionQueue(nc, js), ledger)
        log = structlog.get_logger("test").bind(job_id=job_id, node="node-x")
        await node.apply(StoredJob(job, ack.seq), Succeeded(last, {"ok": True}), log)

        # The timer's handling is over once it withdrew the job's message: as the winner,
        # or as the loser that found the job ended and made sure of the winner's delivery.
        await logs.wait_for("job.withdrawn", job_id=job_id, scheduler="scheduler-t", timeout=15)

        final = JobRecord.model_validate_json(
            (await js.get_msg(subjects.JOBS_STREAM, subject=record_subject)).data or b""
        )
        queue = await SessionQueue(nc, js).read(session_id, after=0, limit=10)
        terminal = [m.delivery for m in queue.messages if m.delivery.id == job_id + TERMINAL_SUFFIX]
        assert len(terminal) == 1
        expected = {JobState.DONE: "result", JobState.FAILED: "error"}[final.state]
        assert terminal[0].kind == expected, (
            f"the ledger says {final.state.value}, the client is given {terminal[0].kind}"
        )
        # Whoever stored it, winner or loser, stored the winner's (a loser storing its own
        # is the bug above).
        stored = logs.named("job.queued_for_session", id=job_id + TERMINAL_SUFFIX)
        assert stored
        assert {e["kind"] for e in stored} == {expected}
    finally:
        await nc.close()
        await scheduler.drain()
