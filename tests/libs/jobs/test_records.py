"""JobRecords against a real NATS: what it writes and counts as a job's attempts go by."""

import nats
import structlog
from prometheus_client import REGISTRY

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.provision import provision
from ackwire.bus.session_queue import SessionQueue
from ackwire.jobs.ledger import JobLedger, JobState, RunHandler, Started, Succeeded
from ackwire.jobs.messages import JobSubmitted, StoredJob, new_job_id
from ackwire.jobs.records import JobRecords
from ackwire.settings import Settings


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


async def test_an_attempt_replacing_a_running_one_is_counted_as_started(
    nats_server: EmbeddedNats, settings: Settings
) -> None:
    """JetStream redelivered the work (its node went silent): the record goes from running
    to running, attempt 1 to 2, and the first start wrote without reading."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await provision(js, settings)
        records = JobRecords(nc, SessionQueue(nc, js), JobLedger.from_settings(settings))
        session_id = subjects.new_session_id()
        job = JobSubmitted(
            job_id=new_job_id(session_id, None),
            session_id=session_id,
            user="alice",
            kind="echo",
            payload={},
            trace_id="t",
        )
        stored = StoredJob(job, seq=1)
        log = structlog.get_logger("test")
        started = counted("ackwire_job_attempts_started_total")
        ended = counted("ackwire_jobs_ended_total", state="done")

        for delivery in (1, 2):
            applied = await records.apply(
                stored, Started(delivery, f"node-{delivery}"), log, known=records.fresh(stored)
            )
            assert applied.outcome.actions == (RunHandler(delivery),)
            assert applied.outcome.record.state is JobState.RUNNING
        await records.apply(stored, Succeeded(2, {}), log)
        assert (await records.read(stored)).record.state is JobState.DONE

        assert counted("ackwire_job_attempts_started_total") == started + 2
        assert counted("ackwire_jobs_ended_total", state="done") == ended + 1
    finally:
        await nc.close()
