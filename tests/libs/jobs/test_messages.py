"""Jobs as the bus carries them."""

import pytest
from pydantic import ValidationError

from ackwire.jobs.messages import JobSubmitted, new_job_id


def job(job_id: str) -> JobSubmitted:
    return JobSubmitted(
        job_id=job_id, session_id="s-1", user="alice", kind="echo", payload={}, trace_id="t"
    )


def test_the_same_idempotency_key_in_the_same_session_is_the_same_job() -> None:
    session = "s-" + "a" * 22
    assert new_job_id(session, "k") == new_job_id(session, "k")
    assert new_job_id(session, "k") != new_job_id("s-" + "b" * 22, "k")
    assert new_job_id(session, None) != new_job_id(session, None)
    assert job(new_job_id(session, "k")).job_id == new_job_id(session, "k")


@pytest.mark.parametrize("job_id", ["", "j-short", "j-" + "a" * 20 + ".x", "s-" + "a" * 22])
def test_a_job_naming_no_job_id_is_unreadable(job_id: str) -> None:
    """Never a key the ledger's bucket refuses on every redelivery of the job."""
    with pytest.raises(ValidationError, match="not a job id"):
        job(job_id)
