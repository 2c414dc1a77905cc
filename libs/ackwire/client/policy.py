"""When to reconnect, as pure functions (after websockets' `backoff()` and
`process_exception()`): how long to wait, and what a close code means for the client.

Each row of `after_close` is docs/protocol.md's close-code table, "what the client does".
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ackwire.wire.codes import CloseCode


class Next(enum.Enum):
    """What the client does after its socket closed."""

    RESUME_NOW = "resume_now"
    """Reconnect at once, to the next gateway, and resume (1001: a drain)."""
    RESUME_LATER = "resume_later"
    """Reconnect after a back-off and resume (1011, 4429, a network loss, …)."""
    RENEW_TOKEN = "renew_token"  # noqa: S105 (a verdict, not a secret)
    """Get a fresh token, then resume (4401: the token is not, or no longer, good)."""
    NEW_SESSION = "new_session"
    """Start a new session, without `resume` (4403: the resume was refused)."""
    STOP = "stop"
    """Do not reconnect: the session is over or held by someone else."""


@dataclass(frozen=True, slots=True)
class CloseVerdict:
    next: Next
    why: str


def after_close(code: int | None, reason: str) -> CloseVerdict:
    """The client's move after a close with `code` (`None`: no close frame, a network
    loss or a failed connect). A code not in the contract is treated as a transient
    failure: the session is resumable unless the gateway says otherwise."""
    said = f"{code} {reason}".strip() if code is not None else f"connection lost: {reason}"
    match code:
        case CloseCode.GOING_AWAY:
            return CloseVerdict(Next.RESUME_NOW, said)
        case CloseCode.UNAUTHORIZED:
            return CloseVerdict(Next.RENEW_TOKEN, said)
        case CloseCode.FORBIDDEN:
            return CloseVerdict(Next.NEW_SESSION, said)
        case CloseCode.NORMAL | CloseCode.SESSION_TAKEN_OVER:
            return CloseVerdict(Next.STOP, said)
        case CloseCode.POLICY_VIOLATION | CloseCode.MESSAGE_TOO_BIG:
            # Sending the same frames again would be refused again: a bug to fix, not retry.
            return CloseVerdict(Next.STOP, said)
        case _:
            return CloseVerdict(Next.RESUME_LATER, said)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential back-off with full jitter: the n-th wait is uniform in
    [0, min(cap_s, first_s * factor**n)], so clients a dead gateway dropped together do
    not all come back at the same instant."""

    first_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0

    def __post_init__(self) -> None:
        if not (0 < self.first_s <= self.cap_s and self.factor >= 1):
            raise ValueError("0 < first_s <= cap_s and factor >= 1 are required")

    def delays(self, random: Callable[[], float]) -> Iterator[float]:
        """The waits before each attempt of one outage (`random` returns [0, 1))."""
        ceiling = self.first_s
        while True:
            yield random() * ceiling
            ceiling = min(ceiling * self.factor, self.cap_s)
