"""Two inputs for one job racing in a real scheduler, forced into their worst interleaving at
the bus boundary: both read the same version of the job's record, and the first to write it
loses the compare-and-set."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import pytest
import structlog
from nats.js.kv import KeyValue

from ackwire.bus import subjects
from ackwire.bus.session_queue import SessionQueue
from ackwire.jobs.ledger import JobRecord, JobState
from ackwire.jobs.messages import TERMINAL_SUFFIX, AttemptSucceeded, JobSubmitted, new_job_id
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
    real = getattr(KeyValue, method)

    async def gated(kv: KeyValue, key: str, *args: Any, **kwargs: Any) -> Any:
        return await rendezvous(key, lambda: real(kv, key, *args, **kwargs))

    monkeypatch.setattr(KeyValue, method, gated)


async def test_a_timer_and_a_result_racing_end_in_one_terminal_delivery_matching_the_ledger(
    job_settings: Settings, logs: LogWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = Scheduler(job_settings, name="scheduler-t", host="127.0.0.1")
    with structlog.contextvars.bound_contextvars(scheduler=scheduler.name):
        await scheduler.start()
    nc = await nats.connect(job_settings.nats_url)
    try:
        js = nc.jetstream()
        session_id = subjects.new_session_id()
        job_id = new_job_id(session_id, None)
        last = job_settings.max_attempts
        now = time.time()
        # The last attempt runs; its node was last heard a job timeout ago, so the job's
        # timer fails it, while its result is on the way.
        running = JobRecord(
            job_id=job_id,
            session_id=session_id,
            user="alice",
            kind="echo",
            trace_id="t-race",
            state=JobState.RUNNING,
            attempt=last,
            node="node-x",
            waiting_since=now - 60,
            last_heard_at=now - job_settings.job_timeout_s - 1,
        )
        kv = await js.key_value(subjects.JOBS_BUCKET)
        await kv.create(job_id, running.model_dump_json().encode())
        gate(monkeypatch, "get", Rendezvous(job_id))
        gate(monkeypatch, "update", Rendezvous(job_id))

        timer = JobSubmitted(
            job_id=job_id,
            session_id=session_id,
            user="alice",
            kind="echo",
            payload={},
            trace_id="t-race",
        )
        result = AttemptSucceeded(
            job_id=job_id, attempt=last, node="node-x", trace_id="t-race", data={"ok": True}
        )
        await js.publish(subjects.JOB_SUBMITTED, timer.to_bytes())
        await js.publish(subjects.job_event_subject(job_id), result.to_bytes())

        # The loser read the winner's record, and the winner stored its delivery.
        await logs.wait_for("job.input_ignored", job_id=job_id, timeout=15)
        stored = await logs.wait_for("job.queued_for_session", id=job_id + TERMINAL_SUFFIX)

        final = JobRecord.model_validate_json((await kv.get(job_id)).value or b"")
        queue = await SessionQueue(nc, js).read(session_id, after=0, limit=10)
        terminal = [m.delivery for m in queue.messages if m.delivery.id == job_id + TERMINAL_SUFFIX]
        assert len(terminal) == 1
        expected = {JobState.DONE: "result", JobState.FAILED: "error"}[final.state]
        assert (terminal[0].kind, stored["kind"]) == (expected, expected), (
            f"the ledger says {final.state.value}, the client is given {terminal[0].kind}"
        )
        # Only the winner stored a delivery (a loser that stored first is the bug above).
        assert len(logs.named("job.queued_for_session", id=job_id + TERMINAL_SUFFIX)) == 1
    finally:
        await nc.close()
        await scheduler.drain()
