"""Close codes and error codes of the ackwire v1 client protocol.

Both are part of the wire contract: clients switch on them, so a member's
value never changes once released.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """WebSocket close codes the gateway uses, and what a client should do."""

    NORMAL = 1000
    """The session ended for good (after `bye`). Do not resume."""
    GOING_AWAY = 1001
    """The gateway is draining: reconnect at once, to any gateway, and resume."""
    POLICY_VIOLATION = 1008
    """Too many bad frames in a row."""
    MESSAGE_TOO_BIG = 1009
    """A frame was larger than `max_frame_bytes`."""
    INTERNAL_ERROR = 1011
    """The gateway failed; the session stays resumable."""
    HELLO_TIMEOUT = 4001
    """No `hello` arrived within the hello timeout."""
    UNAUTHORIZED = 4401
    """Missing, invalid or expired token, or a frame before `hello`."""
    FORBIDDEN = 4403
    """The resume was refused: another user's session or a wrong resume token."""
    SESSION_TAKEN_OVER = 4409
    """The session was resumed on another connection."""
    TOO_SLOW = 4429
    """The client fell behind or sent too fast: reconnect after a back-off."""


class ErrorCode(StrEnum):
    """The `code` of an `error` frame: stable, machine-readable."""

    BAD_FRAME = "bad_frame"
    """The frame could not be read: not JSON, no known `type`, a field of the wrong type."""
    NO_SUCH_KIND = "no_such_kind"
    """No node serves the submitted job kind."""
    BAD_PAYLOAD = "bad_payload"
    """The job payload does not match the kind's schema."""
    RATE_LIMITED = "rate_limited"
    """Too many submits; try again later."""
    UNAVAILABLE = "unavailable"
    """The gateway could not confirm the request was stored or served; retrying is safe."""
    BAD_TOKEN = "bad_token"  # noqa: S105 (an error code, not a secret)
    """A `refresh` carried a token that is invalid, expired or names another `sub`; the
    connection keeps its old token and deadline."""
    FORBIDDEN_TOPIC = "forbidden_topic"
    """The token's `topics` claim does not allow this topic."""
    TOO_MANY_TOPICS = "too_many_topics"
    """(extension) The session holds as many subscriptions as a session may."""
    TOPIC_GAP = "topic_gap"
    """(extension) Events of a subscribed topic were lost: the store no longer holds them
    (`gap` says which). The subscription goes on."""
