"""What nodes report of jobs, as the scheduler reads it."""

import json

import pytest
from pydantic import TypeAdapter, ValidationError

from ackwire.jobs.messages import AttemptAlive, JobEvent, new_job_id

EVENTS: TypeAdapter[JobEvent] = TypeAdapter(JobEvent)


def report(job_id: str) -> bytes:
    return json.dumps(
        {"event": "alive", "job_id": job_id, "attempt": 1, "node": "n", "trace_id": "t"}
    ).encode()


def test_a_keep_alive_report_reads_as_one() -> None:
    job_id = new_job_id("s-" + "a" * 22, "k")
    assert EVENTS.validate_json(report(job_id)) == AttemptAlive(
        job_id=job_id, attempt=1, node="n", trace_id="t"
    )


@pytest.mark.parametrize("job_id", ["", "j-short", "j-" + "a" * 20 + ".x", "s-" + "a" * 22])
def test_a_report_naming_no_job_id_is_unreadable(job_id: str) -> None:
    """Never a key the ledger's bucket refuses on every redelivery of the report."""
    with pytest.raises(ValidationError, match="not a job id"):
        EVENTS.validate_json(report(job_id))
