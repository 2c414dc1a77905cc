"""Taking a client's `submit`: check it, store it, and answer only what the store confirmed.

A connection's submits are stored side by side, each answered (by its `ref`)
the moment the store confirmed it: one client's jobs never queue behind each
other's round trips. At most `SUBMITS_IN_FLIGHT` at once; past that, the
connection reads its next frame once one is answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache

import jsonschema_rs
import structlog
from nats.js import JetStreamContext
from nats.js.api import Header
from websockets.exceptions import ConnectionClosed

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.nodes import NodeDirectory
from ackwire.errors import BusError, SequenceConflictError
from ackwire.jobs.messages import JobSubmitted, new_job_id
from ackwire.lifecycle import BackgroundTasks
from ackwire.tracing import span
from ackwire.wire.codes import ErrorCode
from ackwire.wire.frames import Accepted, Error, Submit
from ackwire.wire.rate import TokenBucket
from ackwire.wire.tracecontext import trace_id_of

_STORE_TIMEOUT_S = 5.0
#: The subject `Nats-Expected-Last-Subject-Sequence` is checked on, if not the publish's
#: own (nats-server 2.11 and later; nats-py has no constant for it).
_EXPECTED_LAST_ON = "Nats-Expected-Last-Subject-Sequence-Subject"
SUBMITS_IN_FLIGHT = 64

_log = structlog.get_logger("ackwire.gateway")


class JobIntake:
    """One connection's submits (the rate budget is per connection's session)."""

    def __init__(
        self,
        js: JetStreamContext,
        nodes: NodeDirectory,
        budget: TokenBucket,
        answer: Callable[[Accepted | Error], Awaitable[None]],
        *,
        session_id: str,
        user: str,
    ) -> None:
        self._js = js
        self._nodes = nodes
        self._budget = budget
        self._answer = answer
        self._session_id = session_id
        self._user = user
        self._in_flight = asyncio.Semaphore(SUBMITS_IN_FLIGHT)
        self._storing = BackgroundTasks()

    async def take(self, frame: Submit) -> None:
        """Start on `frame`: returns once it is under way, answered when it is done."""
        await self._in_flight.acquire()
        self._storing.spawn(self._answered(frame), name=f"submit {frame.ref}")

    async def finish(self) -> None:
        """Wait for the submits under way (each bounded by the store's timeout)."""
        await self._storing.finish()

    async def _answered(self, frame: Submit) -> None:
        try:
            await self._answer(await self._submit(frame))
        except ConnectionClosed:
            pass  # stored or not, the client's resubmit under its idempotency key tells
        finally:
            self._in_flight.release()

    async def _submit(self, frame: Submit) -> Accepted | Error:
        wait = self._budget.take(time.monotonic())
        if wait > 0:
            return _error(frame, ErrorCode.RATE_LIMITED, f"too many submits; retry in {wait:.2f} s")
        schema = self._nodes.payload_schema(frame.kind)
        if schema is None:
            return _error(frame, ErrorCode.NO_SUCH_KIND, f"no node serves {frame.kind!r}")
        problem = _payload_problem(schema, frame.payload)
        if problem is not None:
            return _error(frame, ErrorCode.BAD_PAYLOAD, problem)
        job_id = new_job_id(self._session_id, frame.idempotency_key)
        # The client's trace continues here, or a new one starts.
        with span("ackwire.submit", frame.traceparent, job_id=job_id, kind=frame.kind) as context:
            job = JobSubmitted(
                job_id=job_id,
                session_id=self._session_id,
                user=self._user,
                kind=frame.kind,
                payload=frame.payload,
                trace_id=trace_id_of(context),
            )
            return await self._store(frame, job, context)

    async def _store(self, frame: Submit, job: JobSubmitted, context: str) -> Accepted | Error:
        log = _log.bind(job_id=job.job_id, trace_id=job.trace_id, kind=job.kind)
        try:
            with bus_errors(f"storing job {job.job_id}"):
                async with asyncio.timeout(_STORE_TIMEOUT_S):
                    await self._js.publish(
                        subjects.work_subject(job.kind, job.job_id),
                        job.to_bytes(),
                        headers={
                            # Stored only if nothing of the job ever was: the same job id
                            # (the same idempotency key) is one job for as long as its
                            # record is kept, however late the resubmit.
                            Header.EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
                            _EXPECTED_LAST_ON: subjects.anything_of_job(job.job_id),
                            "traceparent": context,
                        },
                    )
        except SequenceConflictError:
            log.info("job.accepted_again")  # stored before: a resubmit, or a retried store
            return Accepted(ref=frame.ref, job_id=job.job_id)
        except BusError as exc:
            # Maybe stored, maybe not: the client may resubmit under its idempotency key.
            log.warning("job.store_unconfirmed", error=str(exc))
            return _error(frame, ErrorCode.UNAVAILABLE, "the job store did not confirm; retry")
        log.info("job.accepted")
        return Accepted(ref=frame.ref, job_id=job.job_id)


def _error(frame: Submit, code: ErrorCode, message: str) -> Error:
    return Error(ref=frame.ref, code=code, message=message)


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema_rs.Draft202012Validator | None:
    # jsonschema-rs: a valid payload costs well under a microsecond, where the Python
    # jsonschema took some 16 (the echo kind's schema). Formats are not asserted, as
    # that one did not; a remote `$ref` is never fetched: the schema is then broken.
    try:
        return jsonschema_rs.Draft202012Validator(
            json.loads(schema_json), validate_formats=False, offline=True
        )
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError):
        return None


def _payload_problem(schema_json: str, payload: object) -> str | None:
    validator = _validator(schema_json)
    if validator is None:
        return None  # a node registered a broken schema: its handler will judge the payload
    error = next(validator.iter_errors(payload), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.instance_path)
    return f"{where}: {error.message}"[:200] if where else error.message[:200]
