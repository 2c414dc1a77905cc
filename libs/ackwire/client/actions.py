"""What `ClientMachine` returns: the actions for its I/O layer (open a socket, send a
frame, start a timer…) and what the application is handed or told."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ackwire.client.exceptions import LostWork
from ackwire.client.phases import Phase
from ackwire.client.store import SavedSession
from ackwire.errors import AckwireError
from ackwire.wire.frames import ClientFrame, Deliver, Event


class Timer(enum.Enum):
    RECONNECT = "reconnect"
    REFRESH = "refresh"
    DEADLINE = "deadline"
    RETRY = "retry"


# -- actions for the I/O layer ------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenSocket:
    url: str


@dataclass(frozen=True, slots=True)
class SendFrame:
    frame: ClientFrame


@dataclass(frozen=True, slots=True)
class CloseSocket:
    """Close the socket, if one is open (the machine stopped without a `bye`)."""


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call `timer_due(timer, …)` at `at` (the machine's clock); replaces any earlier."""

    timer: Timer
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True, slots=True)
class RenewToken:
    """Ask the application for a fresh token: `token_renewed` or `token_renewal_failed`."""


# -- what the application is handed or told -------------------------------------


@dataclass(frozen=True, slots=True)
class JobAccepted:
    ref: str
    job_id: str


@dataclass(frozen=True, slots=True)
class JobDelivery:
    """A job's `progress`, `result` or `error`: call `handled(deliver.id)` once done."""

    ref: str
    deliver: Deliver


@dataclass(frozen=True, slots=True)
class MessageDelivery:
    """A `message` from a backend: call `handled(deliver.id)` once done."""

    deliver: Deliver


@dataclass(frozen=True, slots=True)
class TopicSubscribed:
    ref: str
    topic: str


@dataclass(frozen=True, slots=True)
class TopicEvent:
    event: Event


@dataclass(frozen=True, slots=True)
class TopicGapTold:
    """Events of `topic` with `after < seq < before` may never come (docs/protocol.md,
    Topics, lost events)."""

    topic: str
    after: int
    before: int


@dataclass(frozen=True, slots=True)
class TopicEnded:
    topic: str
    error: AckwireError


@dataclass(frozen=True, slots=True)
class RequestFailed:
    ref: str
    error: AckwireError


@dataclass(frozen=True, slots=True)
class SessionReset:
    """The session could not be resumed; `lost` is what went with it."""

    lost: LostWork


@dataclass(frozen=True, slots=True)
class KeepSession:
    """Keep this session to resume after a restart (`None`: nothing is left to resume)."""

    session: SavedSession | None


@dataclass(frozen=True, slots=True)
class StateChanged:
    phase: Phase
    gateway: str | None
    why: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Worth a log line, nothing to do: `event` is `area.what_happened`."""

    event: str
    detail: str


Action = (
    OpenSocket
    | SendFrame
    | CloseSocket
    | StartTimer
    | CancelTimer
    | RenewToken
    | JobAccepted
    | JobDelivery
    | MessageDelivery
    | TopicSubscribed
    | TopicEvent
    | TopicGapTold
    | TopicEnded
    | RequestFailed
    | SessionReset
    | KeepSession
    | StateChanged
    | Notice
)
