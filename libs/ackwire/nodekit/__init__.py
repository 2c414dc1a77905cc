"""Writing a job kind: a typed async handler, payload model in, result model out.

    class TranslatePayload(BaseModel):
        text: str
        source: str
        target: str

    class Translation(BaseModel):
        text: str

    async def translate(payload: TranslatePayload, job: JobContext) -> Translation:
        await job.progress(50)
        return Translation(text=...)

    TRANSLATE = JobKind("translate", TranslatePayload, translate)

A node registers each kind with its payload's JSON schema (so gateways refuse
a bad payload before it is stored), runs its handler for every attempt, and
reports progress, the result, or the exception the handler raised (a failed
attempt: the job runs again, up to the attempt limit).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, JsonValue

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class JobContext(Protocol):
    """What a handler knows of its job, and how it reports progress."""

    @property
    def job_id(self) -> str: ...

    @property
    def attempt(self) -> int:
        """1 on the first attempt; more when an earlier attempt failed or its node died."""

    @property
    def trace_id(self) -> str: ...

    async def progress(self, percent: float) -> None:
        """Report progress (0-100); it reaches the client and keeps a long job alive."""


@dataclass(frozen=True, slots=True)
class JobKind(Generic[P, R]):
    name: str
    payload: type[P]
    run: Callable[[P, JobContext], Awaitable[R]]

    def payload_schema(self) -> dict[str, Any]:
        return self.payload.model_json_schema()

    async def __call__(self, payload: dict[str, JsonValue], job: JobContext) -> JsonValue:
        """Validate the payload, run the handler, and return the result as JSON data."""
        result = await self.run(self.payload.model_validate(payload), job)
        data: JsonValue = result.model_dump(mode="json")
        return data


__all__ = ["JobContext", "JobKind"]
