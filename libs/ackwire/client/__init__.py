"""The ackwire client SDK for Python: reconnecting, resuming, deduping, acking and
refreshing are its job, never the application's (docs/sdk-python.md).

    async with Client("ws://127.0.0.1:8765", token=token) as client:
        result = await client.run("translate", {"text": "你好", "source": "zh", "target": "en"})
        async for event in client.subscribe("pipeline.42"):
            ...

`ackwire.client.machine` is the protocol's client half with no I/O; `Client`
only moves its frames and runs its timers.
"""

from ackwire.client.actions import StateChanged
from ackwire.client.driver import Client, TokenSource
from ackwire.client.exceptions import (
    ClientClosedError,
    DeadlineExceededError,
    FrameTooLargeError,
    JobFailedError,
    LostWork,
    ProtocolViolationError,
    RequestQueueFullError,
    RequestRefusedError,
    SessionResetError,
    SessionTakenOverError,
)
from ackwire.client.handles import Gap, Job
from ackwire.client.phases import Phase
from ackwire.client.policy import Backoff
from ackwire.errors import InvalidTokenError
from ackwire.wire.frames import Deliver, Event

__all__ = [
    "Backoff",
    "Client",
    "ClientClosedError",
    "DeadlineExceededError",
    "Deliver",
    "Event",
    "FrameTooLargeError",
    "Gap",
    "InvalidTokenError",
    "Job",
    "JobFailedError",
    "LostWork",
    "Phase",
    "ProtocolViolationError",
    "RequestQueueFullError",
    "RequestRefusedError",
    "SessionResetError",
    "SessionTakenOverError",
    "StateChanged",
    "TokenSource",
]
