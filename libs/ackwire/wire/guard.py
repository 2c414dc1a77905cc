"""The rules for frames arriving from a client, with no I/O.

`FrameGuard` is the gateway's inbound half of the protocol: it reads each
frame, enforces "hello first" and "10 bad frames in a row close the
connection", and tells the I/O layer what to do. It never touches a socket;
the gateway feeds it text and carries out its verdicts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ackwire.wire.codec import BadFrame, parse_client_frame
from ackwire.wire.codes import CloseCode, ErrorCode
from ackwire.wire.frames import ClientFrame, Error, Hello

#: protocol.md, Transport: "after 10 bad frames in a row the gateway closes with 1008".
MAX_BAD_FRAMES_IN_A_ROW = 10


class Phase(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Accept:
    """A well-formed frame for the application to handle."""

    frame: ClientFrame


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer with this `error` frame; the connection stays open."""

    error: Error


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with this code and reason."""

    code: CloseCode
    reason: str


Verdict = Accept | Reject | Close


class GuardStateError(RuntimeError):
    """The caller fed a frame in the wrong phase (a bug in the caller, not the client)."""


class FrameGuard:
    """Inbound frame rules for one client connection."""

    def __init__(self) -> None:
        self._phase = Phase.AWAITING_HELLO
        self._bad_in_a_row = 0

    @property
    def phase(self) -> Phase:
        return self._phase

    def receive_hello(self, data: str | bytes) -> Hello | Close:
        """Judge the connection's first message: it must be a `hello`."""
        self._expect(Phase.AWAITING_HELLO)
        frame = parse_client_frame(data)
        if isinstance(frame, Hello):
            return frame
        if isinstance(frame, BadFrame):
            return self._close(
                CloseCode.UNAUTHORIZED, f"the first frame must be hello: {frame.reason}"
            )
        return self._close(CloseCode.UNAUTHORIZED, f"not authenticated: {frame.type} before hello")

    def receive(self, data: str | bytes) -> Verdict:
        """Judge one message after the `hello` was accepted."""
        self._expect(Phase.OPEN)
        frame = parse_client_frame(data)
        if isinstance(frame, Hello):
            frame = BadFrame("hello was already accepted on this connection")
        if isinstance(frame, BadFrame):
            self._bad_in_a_row += 1
            if self._bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW:
                return self._close(
                    CloseCode.POLICY_VIOLATION, f"{self._bad_in_a_row} bad frames in a row"
                )
            return Reject(Error(ref=frame.ref, code=ErrorCode.BAD_FRAME, message=frame.reason))
        self._bad_in_a_row = 0
        return Accept(frame)

    def hello_accepted(self) -> None:
        """The application authenticated the `hello`: the connection is open."""
        self._expect(Phase.AWAITING_HELLO)
        self._phase = Phase.OPEN

    def hello_timed_out(self) -> Close:
        return self._close(CloseCode.HELLO_TIMEOUT, "no hello in time")

    def unauthorized(self, why: str) -> Close:
        return self._close(CloseCode.UNAUTHORIZED, why)

    def _expect(self, phase: Phase) -> None:
        if self._phase is not phase:
            raise GuardStateError(
                f"a frame arrived in phase {self._phase.value}, not {phase.value}"
            )

    def _close(self, code: CloseCode, reason: str) -> Close:
        self._phase = Phase.CLOSED
        # RFC 6455 5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
        return Close(code, reason.encode()[:123].decode(errors="ignore"))
