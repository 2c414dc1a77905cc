"""The client's phases, and the inputs that move it from one to the next: one table.

`ClientMachine` moves only along `TRANSITIONS`; docs/sdk-python.md draws its diagram
from it (`diagram`), and a test checks the two agree.
"""

from __future__ import annotations

import enum

from ackwire.state_diagram import mermaid


class Phase(enum.Enum):
    CONNECTING = "connecting"
    """Opening a socket for a new session, until its `welcome`."""
    WELCOMED = "welcomed"
    """Connected: frames flow both ways."""
    RESUMING = "resuming"
    """Opening a socket to resume the session, until its `welcome`."""
    BACKING_OFF = "backing_off"
    """Waiting before the next attempt (or for a fresh token)."""
    CLOSED = "closed"
    """Stopped for good; `closed_reason` says why."""


class Input(enum.Enum):
    CONNECT = "connect"
    RESUME = "resume"
    WELCOME = "welcome"
    BACK_OFF = "back_off"
    STOP = "stop"


#: (phase, input) -> the next phase. A pair not here is a bug in the machine.
TRANSITIONS: dict[tuple[Phase, Input], Phase] = {
    (Phase.CONNECTING, Input.WELCOME): Phase.WELCOMED,
    (Phase.CONNECTING, Input.CONNECT): Phase.CONNECTING,
    (Phase.CONNECTING, Input.BACK_OFF): Phase.BACKING_OFF,
    (Phase.CONNECTING, Input.STOP): Phase.CLOSED,
    (Phase.WELCOMED, Input.RESUME): Phase.RESUMING,
    (Phase.WELCOMED, Input.BACK_OFF): Phase.BACKING_OFF,
    (Phase.WELCOMED, Input.STOP): Phase.CLOSED,
    (Phase.RESUMING, Input.WELCOME): Phase.WELCOMED,
    (Phase.RESUMING, Input.RESUME): Phase.RESUMING,
    (Phase.RESUMING, Input.CONNECT): Phase.CONNECTING,
    (Phase.RESUMING, Input.BACK_OFF): Phase.BACKING_OFF,
    (Phase.RESUMING, Input.STOP): Phase.CLOSED,
    (Phase.BACKING_OFF, Input.CONNECT): Phase.CONNECTING,
    (Phase.BACKING_OFF, Input.RESUME): Phase.RESUMING,
    (Phase.BACKING_OFF, Input.BACK_OFF): Phase.BACKING_OFF,
    (Phase.BACKING_OFF, Input.STOP): Phase.CLOSED,
}


def diagram() -> str:
    """The transitions as a Mermaid state diagram (the one in docs/sdk-python.md)."""
    return mermaid(TRANSITIONS, Phase.CONNECTING, Phase.CLOSED)
