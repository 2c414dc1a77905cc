"""The demo job kinds of operations.md, written as a user would write their own."""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel

from ackwire.nodekit import JobContext, JobKind


class AnyObject(RootModel[dict[str, JsonValue]]):
    """Any JSON object."""


async def _echo(payload: AnyObject, _job: JobContext) -> AnyObject:
    return payload


class SleepPayload(BaseModel):
    seconds: Annotated[float, Field(ge=0, le=3600)]


class Slept(BaseModel):
    slept: float


async def _sleep(payload: SleepPayload, job: JobContext) -> Slept:
    steps = max(1, int(payload.seconds))
    for step in range(steps):
        await job.progress(100 * step / steps)
        await asyncio.sleep(payload.seconds / steps)
    return Slept(slept=payload.seconds)


class FailPayload(BaseModel):
    message: str = "this job fails on purpose"


class DemoFailureError(Exception):
    """Raised by the `fail` kind, on every attempt."""


async def _fail(payload: FailPayload, _job: JobContext) -> BaseModel:
    raise DemoFailureError(payload.message)


class TranslatePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(max_length=10_000)]
    source: Annotated[str, Field(min_length=2, max_length=8)]
    target: Annotated[str, Field(min_length=2, max_length=8)]


class Translation(BaseModel):
    text: str
    source: str
    target: str


#: A tiny offline phrase table; a real model plugs in behind the same handler.
PHRASES: dict[tuple[str, str], dict[str, str]] = {
    ("zh", "en"): {
        "你好": "hello",
        "谢谢": "thank you",
        "再见": "goodbye",
        "早上好": "good morning",
    },
    ("en", "zh"): {
        "hello": "你好",
        "thank you": "谢谢",
        "goodbye": "再见",
        "good morning": "早上好",
    },
}


async def _translate(payload: TranslatePayload, _job: JobContext) -> Translation:
    table = PHRASES.get((payload.source, payload.target), {})
    text = table.get(payload.text.strip().lower(), payload.text)
    return Translation(text=text, source=payload.source, target=payload.target)


DEMO_KINDS: dict[str, JobKind[BaseModel, BaseModel]] = {
    kind.name: kind  # type: ignore[misc]
    for kind in (
        JobKind("echo", AnyObject, _echo),
        JobKind("sleep", SleepPayload, _sleep),
        JobKind("fail", FailPayload, _fail),
        JobKind("translate", TranslatePayload, _translate),
    )
}
