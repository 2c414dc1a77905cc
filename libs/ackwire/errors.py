"""Every exception ackwire raises on purpose, in one tree split by whose fault it is.

    AckwireError
    ├── ClientError              the client broke the contract; telling it is the fix
    │   ├── InvalidTokenError    missing, malformed, badly signed or expired token
    │   └── ResumeRefusedError   not this client's session to resume (4403)
    ├── BusError                 NATS or JetStream failed, or did not confirm; the
    │   │                        operation may or may not have happened: retry it
    │   ├── BusUnavailableError  no connection, no responders, timed out, buffer full
    │   └── StoreRejectedError   the store answered, with an error
    ├── ConflictError            someone else got there first; nothing is broken
    │   ├── SessionChangedError  a record changed since it was read (compare-and-set)
    │   ├── SessionLostError     another connection holds the session (4409)
    │   ├── JobChangedError      a job's record changed under every write tried
    │   └── SequenceConflictError  a write expecting its subject's last message met
    │                            another one (the store's compare-and-set)
    └── InternalError            a bug in ackwire: the caller broke an internal rule

Library errors (nats-py's, websockets') never cross a module boundary as they
are: `ackwire.bus.boundary.bus_errors` translates NATS's once, where the bus is
called.
"""

from __future__ import annotations


class AckwireError(Exception):
    """The root: anything ackwire raises on purpose."""


class ClientError(AckwireError):
    """The client (or a caller of the public API) broke the contract."""


class InvalidTokenError(ClientError):
    """The token is missing, malformed, badly signed or expired; the message says which."""


class ResumeRefusedError(ClientError):
    """Close 4403: not this client's session to resume."""


class BusError(AckwireError):
    """NATS or JetStream failed or did not confirm: the operation may not have happened."""


class BusUnavailableError(BusError):
    """No answer: no connection, nobody listening, a timeout, the outbound buffer full."""


class StoreRejectedError(BusError):
    """JetStream answered with an error."""


class ConflictError(AckwireError):
    """Someone else got there first."""


class SessionChangedError(ConflictError):
    """The record changed since it was read: someone else wrote it first."""


class SessionLostError(ConflictError):
    """Close 4409: another connection claimed the session first."""


class JobChangedError(ConflictError):
    """A job's record changed under every compare-and-set tried: its input comes again."""


class SequenceConflictError(ConflictError):
    """A write that expected its subject's last message to be a given one (JetStream's
    expected last subject sequence) found another: someone wrote there first."""


class InternalError(AckwireError):
    """A bug in ackwire: a caller broke one of its internal rules."""
