"""One client connection's life, with no I/O: every rule that decides what happens to it.

`ConnectionGuard` is the gateway's half of the protocol for one connection. It
reads each inbound frame, enforces "hello first" and "10 bad frames in a row
close the connection", and makes every decision to close: hello timeout, a bad
token, a refused resume, `bye`, a takeover, a client too slow, a token past its
`exp`, a bus failure, a drain. It never touches a socket; the gateway feeds it
text and facts and carries out its verdicts.

Everything that moves the connection from one phase to the next is a row of
`TRANSITIONS` (docs/architecture.md draws its diagram from this table):

- the first decision to close wins: a connection gets exactly one close code,
  and once it is closing no frame is sent to the client any more;
- frames read while closing are not served, except acks: the client sent them
  before it saw the close, and what it acked is confirmed before the connection
  lets go;
- a `deliver` of a message the session sent before (on this or an earlier
  connection) is flagged `redelivered` (`was_sent_before`);
- which topics the connection may hold (`TopicAdmission`): what its token's
  `topics` claim allows, at most `max_topics`, and at most so many changes a
  second (each one writes the session's record).
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from ackwire.errors import InternalError
from ackwire.state_diagram import mermaid
from ackwire.wire.codec import BadFrame, parse_client_frame
from ackwire.wire.codes import CloseCode, ErrorCode
from ackwire.wire.frames import Ack, ClientFrame, Error, Hello
from ackwire.wire.rate import TokenBucket
from ackwire.wire.topics import BadTopicError, allowed, topic_name

#: docs/protocol.md, Transport: "after 10 bad frames in a row the gateway closes with 1008".
MAX_BAD_FRAMES_IN_A_ROW = 10


class Phase(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    """Upgraded; the first frame must be a `hello`, within the hello timeout."""
    OPENING = "opening"
    """The `hello` was read and its token verified; the session is being opened."""
    OPEN = "open"
    """Welcomed: frames flow both ways."""
    CLOSING = "closing"
    """A close was decided; acks read are confirmed, nothing more is sent."""
    CLOSED = "closed"
    """The socket is gone."""


class Input(enum.Enum):
    HELLO = "hello"
    OPENED = "opened"
    CLOSE = "close"
    SOCKET_LOST = "socket_lost"


#: (phase, input) -> the next phase. Anything missing is a bug in the caller.
TRANSITIONS: dict[tuple[Phase, Input], Phase] = {
    (Phase.AWAITING_HELLO, Input.HELLO): Phase.OPENING,
    (Phase.AWAITING_HELLO, Input.CLOSE): Phase.CLOSING,
    (Phase.AWAITING_HELLO, Input.SOCKET_LOST): Phase.CLOSED,
    (Phase.OPENING, Input.OPENED): Phase.OPEN,
    (Phase.OPENING, Input.CLOSE): Phase.CLOSING,
    (Phase.OPENING, Input.SOCKET_LOST): Phase.CLOSED,
    (Phase.OPEN, Input.CLOSE): Phase.CLOSING,
    (Phase.OPEN, Input.SOCKET_LOST): Phase.CLOSED,
    (Phase.CLOSING, Input.CLOSE): Phase.CLOSING,  # a later decision changes nothing
    (Phase.CLOSING, Input.SOCKET_LOST): Phase.CLOSED,
    (Phase.CLOSED, Input.CLOSE): Phase.CLOSED,
    (Phase.CLOSED, Input.SOCKET_LOST): Phase.CLOSED,
}


@dataclass(frozen=True, slots=True)
class Accept:
    """A well-formed frame for the application to handle."""

    frame: ClientFrame


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer with this `error` frame; the connection stays open."""

    error: Error


@dataclass(frozen=True, slots=True)
class Ignore:
    """Read while closing: not served."""


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with this code and reason."""

    code: CloseCode
    reason: str


Verdict = Accept | Reject | Ignore | Close


class ConnectionGuard:
    """The rules of one client connection, from upgrade to close."""

    def __init__(self) -> None:
        self._phase = Phase.AWAITING_HELLO
        self._bad_in_a_row = 0
        self._close: Close | None = None
        self._sent_before = 0

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def close_decided(self) -> Close | None:
        """The one close this connection gets, once decided."""
        return self._close

    @property
    def may_send(self) -> bool:
        """Frames may go to the client: it is welcomed (or being welcomed) and no close
        was decided."""
        return self._phase in (Phase.OPENING, Phase.OPEN)

    # -- inputs ----------------------------------------------------------------

    def receive_hello(self, data: str | bytes) -> Hello | Close:
        """Judge the connection's first message: it must be a `hello`."""
        self._expect(Phase.AWAITING_HELLO)
        frame = parse_client_frame(data)
        if isinstance(frame, Hello):
            self._move(Input.HELLO)
            return frame
        if isinstance(frame, BadFrame):
            return self._first_close(
                CloseCode.UNAUTHORIZED, f"the first frame must be hello: {frame.reason}"
            )
        return self._first_close(
            CloseCode.UNAUTHORIZED, f"not authenticated: {frame.type} before hello"
        )

    def opened(self, *, sent_before: int) -> bool:
        """The session is open (messages up to `sent_before` may have been sent on an
        earlier connection). `False` when a close was decided meanwhile (a takeover
        while opening): then no `welcome` is sent."""
        self._sent_before = sent_before  # true either way: a takeover answers with it
        if self._phase is not Phase.OPENING:
            return False
        self._move(Input.OPENED)
        return True

    def receive(self, data: str | bytes) -> Verdict:
        """Judge one message from an open (or closing) connection."""
        if self._phase is Phase.CLOSING:
            frame = parse_client_frame(data)
            return Accept(frame) if isinstance(frame, Ack) else Ignore()
        self._expect(Phase.OPEN)
        frame = parse_client_frame(data)
        if isinstance(frame, Hello):
            frame = BadFrame("hello was already accepted on this connection")
        if isinstance(frame, BadFrame):
            self._bad_in_a_row += 1
            if self._bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW:
                return self._first_close(
                    CloseCode.POLICY_VIOLATION, f"{self._bad_in_a_row} bad frames in a row"
                )
            return Reject(Error(ref=frame.ref, code=ErrorCode.BAD_FRAME, message=frame.reason))
        self._bad_in_a_row = 0
        return Accept(frame)

    @property
    def sent_before(self) -> int:
        """How far the session's earlier connections may have sent."""
        return self._sent_before

    def was_sent_before(self, seq: int) -> bool:
        """A message this far into the queue may have reached the client already."""
        return seq <= self._sent_before

    def socket_lost(self) -> None:
        self._move(Input.SOCKET_LOST)

    # -- decisions to close ----------------------------------------------------
    # Each returns the close to carry out, or `None` when one was decided already.

    def hello_timed_out(self) -> Close | None:
        return self._decide(CloseCode.HELLO_TIMEOUT, "no hello in time")

    def unauthorized(self, why: str) -> Close | None:
        return self._decide(CloseCode.UNAUTHORIZED, why)

    def refused(self, why: str) -> Close | None:
        """The resume was refused: not this client's session."""
        return self._decide(CloseCode.FORBIDDEN, why)

    def taken_over(self) -> Close | None:
        return self._decide(CloseCode.SESSION_TAKEN_OVER, "session taken over")

    def ended(self) -> Close | None:
        """The session ended for good after `bye`."""
        return self._decide(CloseCode.NORMAL, "bye")

    def too_slow(self) -> Close | None:
        return self._decide(CloseCode.TOO_SLOW, "too slow: events piled up; resume")

    def token_expired(self) -> Close | None:
        return self._decide(CloseCode.UNAUTHORIZED, "token expired; resume with a new one")

    def bus_failed(self, what: str) -> Close | None:
        return self._decide(CloseCode.INTERNAL_ERROR, f"{what}; resume")

    def draining(self) -> Close | None:
        return self._decide(CloseCode.GOING_AWAY, "gateway draining; resume elsewhere")

    # -- inside ----------------------------------------------------------------

    def _decide(self, code: CloseCode, reason: str) -> Close | None:
        if self._close is not None or self._phase is Phase.CLOSED:
            return None
        self._move(Input.CLOSE)
        # RFC 6455 5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
        self._close = Close(code, reason.encode()[:123].decode(errors="ignore"))
        return self._close

    def _first_close(self, code: CloseCode, reason: str) -> Close:
        """A close decided where none can have been decided before (the phase says so)."""
        close = self._decide(code, reason)
        if close is None:
            raise InternalError(f"a second close ({code.value}) in phase {self._phase.value}")
        return close

    def _move(self, event: Input) -> None:
        try:
            self._phase = TRANSITIONS[self._phase, event]
        except KeyError:
            raise InternalError(f"{event.value} in phase {self._phase.value}") from None

    def _expect(self, phase: Phase) -> None:
        if self._phase is not phase:
            raise InternalError(f"a frame arrived in phase {self._phase.value}, not {phase.value}")


class TopicAdmission:
    """Which subscriptions a connection may make and keep. Time is passed in."""

    def __init__(self, claims: tuple[str, ...], *, max_topics: int, rate: TokenBucket) -> None:
        self._claims = claims
        self._max_topics = max_topics
        self._rate = rate

    def allows(self, topic: str) -> bool:
        return allowed(self._claims, topic)

    def reclaim(self, claims: tuple[str, ...]) -> None:
        """A refreshed token's `topics` claim: it applies from now on."""
        self._claims = claims

    def subscribe(self, topic: str, held: Collection[str], now: float) -> Error | None:
        """`None` when a `subscribe` to `topic` may go ahead, else why not (ref unset)."""
        try:
            topic_name(topic)
        except BadTopicError as exc:
            return self._refuse(ErrorCode.BAD_FRAME, str(exc), topic)
        if not self.allows(topic):
            return self._refuse(
                ErrorCode.FORBIDDEN_TOPIC, f"the token's topics claim does not allow {topic}", topic
            )
        if topic in held:
            return None  # nothing changes: answered `subscribed` again
        if len(held) >= self._max_topics:
            return self._refuse(
                ErrorCode.TOO_MANY_TOPICS,
                f"a session holds at most {self._max_topics} topics",
                topic,
            )
        return self._throttled(topic, now)

    def unsubscribe(self, topic: str, held: Collection[str], now: float) -> Error | None:
        return self._throttled(topic, now) if topic in held else None

    def _throttled(self, topic: str, now: float) -> Error | None:
        wait = self._rate.take(now)
        if wait > 0:
            return self._refuse(
                ErrorCode.RATE_LIMITED,
                f"too many subscription changes; retry in {wait:.1f} s",
                topic,
            )
        return None

    @staticmethod
    def _refuse(code: ErrorCode, message: str, topic: str) -> Error:
        return Error(code=code, message=message, topic=topic)


def diagram() -> str:
    """The transitions as a Mermaid state diagram (the one in docs/architecture.md)."""
    return mermaid(TRANSITIONS, Phase.AWAITING_HELLO, Phase.CLOSED)
