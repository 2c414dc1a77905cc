"""What the client SDK raises, placed in ackwire's one exception tree (`ackwire.errors`).

    AckwireError
    ├── ClientError
    │   ├── InvalidTokenError        4401 and no way to a fresh token (ackwire.errors)
    │   ├── ProtocolViolationError   1008 / 1009: the SDK (or the app's frame) broke the contract
    │   ├── FrameTooLargeError       a request larger than the gateway's `max_frame_bytes`
    │   └── RequestQueueFullError    too many requests waiting for a connection
    ├── ConflictError
    │   ├── SessionLostError         (ackwire.errors)
    │   │   └── SessionTakenOverError  4409: another connection holds the session; terminal
    │   └── SessionResetError        the session could not be resumed; carries what was lost
    ├── RequestRefusedError          the gateway answered a request with `error` (`code`)
    ├── JobFailedError               the job ended in a `deliver` of kind `error`
    ├── DeadlineExceededError        (also a TimeoutError) the caller's deadline passed
    └── ClientClosedError            the client has stopped; `reason` says why

Requests fail with these through their awaitables; nothing is raised into the
application from behind its back.
"""

from __future__ import annotations

from dataclasses import dataclass

from ackwire.errors import AckwireError, ClientError, ConflictError, SessionLostError
from ackwire.wire.codes import ErrorCode


class ProtocolViolationError(ClientError):
    """Close 1008 or 1009: the gateway refused what this client sent. Terminal."""


class FrameTooLargeError(ClientError):
    """The request's frame is larger than the gateway accepts (`max_frame_bytes`)."""


class RequestQueueFullError(ClientError):
    """As many requests wait for a connection as the client keeps; try again later."""


class SessionTakenOverError(SessionLostError):
    """Close 4409: a newer connection resumed this session. Terminal: reconnecting with the
    same session would take it back from whoever holds it now."""


@dataclass(frozen=True, slots=True)
class LostWork:
    """What a client can no longer vouch for after its session could not be resumed."""

    reason: str
    """The `welcome`'s `reason` (`expired`, `unknown`), or `refused` after a 4403."""
    session_id: str
    """The session that was lost."""
    job_ids: tuple[str, ...]
    """Jobs accepted and not ended: their results went to the old session."""
    submit_refs: tuple[str, ...]
    """Submits sent and not answered: they may have been stored in the old session."""


class SessionResetError(ConflictError):
    """The session could not be resumed; `lost` says which of this client's work went
    with it. The client goes on in a new session."""

    def __init__(self, lost: LostWork) -> None:
        super().__init__(
            f"session {lost.session_id} could not be resumed ({lost.reason}): "
            f"{len(lost.job_ids)} job(s) and {len(lost.submit_refs)} submit(s) lost with it"
        )
        self.lost = lost


#: Refusals worth retrying later, unchanged (docs/protocol.md, Errors: an unknown code is
#: treated like `unavailable`).
_RETRYABLE = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE})


class RequestRefusedError(AckwireError):
    """The gateway answered a request with an `error` frame."""

    def __init__(self, code: ErrorCode, message: str, *, topic: str | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.topic = topic

    @property
    def retryable(self) -> bool:
        """The same request may succeed later (`rate_limited`, `unavailable`)."""
        return self.code in _RETRYABLE


class JobFailedError(AckwireError):
    """The job ended with a `deliver` of kind `error`: `code` is `no_capacity` or
    `failed` (or a code a newer gateway adds), `message` is for people."""

    def __init__(self, job_id: str, code: str, message: str) -> None:
        super().__init__(f"job {job_id} failed ({code}): {message}")
        self.job_id = job_id
        self.code = code
        self.message = message


class DeadlineExceededError(AckwireError, TimeoutError):
    """The caller's deadline passed before the answer came."""


class ClientClosedError(AckwireError):
    """The client has stopped for good; `reason` is what stopped it."""

    def __init__(self, reason: AckwireError) -> None:
        super().__init__(f"the client is closed: {reason}")
        self.reason = reason
