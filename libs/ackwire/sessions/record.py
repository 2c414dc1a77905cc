"""A session's record and the rules of resuming it, with no I/O.

A session is durable: it outlives its connections and moves between
gateways. Its record says who holds it now (a gateway incarnation and one of
its connections) and how to prove the right to resume it (a hash of the
resume token; the token itself is never stored). Records change only by
compare-and-set on the bus, so the rules here decide and the table only
writes (docs/protocol.md, Handshake):

- no `resume` asked for: a new session (`new`);
- no record of the session: a new session (`unknown`);
- a record of another user's session, or a wrong token: refused (4403);
- a session ended by `bye`, or detached for longer than the TTL: a new
  session (`expired`);
- otherwise the session resumes, taking it over from whoever holds it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal, TypeGuard

from ackwire.bus.models import BusModel
from ackwire.bus.subjects import InvalidNameError, session_token
from ackwire.wire.frames import ResumeRequest


class SessionState(StrEnum):
    LIVE = "live"
    """A connection holds it (if its gateway's lease is alive)."""
    DETACHED = "detached"
    """Its last connection ended without `bye`: resumable until the TTL passes."""
    ENDED = "ended"
    """Ended by `bye`: never resumable again."""


@dataclass(frozen=True, slots=True)
class Holder:
    """One connection of one gateway incarnation."""

    gateway: str
    incarnation: str
    connection_id: str


class SessionRecord(BusModel):
    session_id: str
    user: str
    resume_hash: str
    """SHA-256 of the resume token, hex."""
    state: SessionState
    gateway: str
    incarnation: str
    connection_id: str
    """The holder while `live`; the last one otherwise."""
    created_at: datetime
    changed_at: datetime
    """When the state or the holder last changed (a refresh keeps it)."""
    sent_upto: int = 0
    """The highest seq a connection of this session is known to have sent."""
    topics: tuple[str, ...] = ()
    """The topics it subscribed to: restored on a resume."""

    @classmethod
    def opened(
        cls, *, session_id: str, user: str, resume_token: str, holder: Holder, now: datetime
    ) -> SessionRecord:
        return cls(
            session_id=session_id,
            user=user,
            resume_hash=resume_hash(resume_token),
            state=SessionState.LIVE,
            gateway=holder.gateway,
            incarnation=holder.incarnation,
            connection_id=holder.connection_id,
            created_at=now,
            changed_at=now,
        )

    @property
    def holder(self) -> Holder:
        return Holder(self.gateway, self.incarnation, self.connection_id)

    def claimed(self, holder: Holder, now: datetime) -> SessionRecord:
        return self.model_copy(
            update={
                "state": SessionState.LIVE,
                "gateway": holder.gateway,
                "incarnation": holder.incarnation,
                "connection_id": holder.connection_id,
                "changed_at": now,
            }
        )

    def let_go(self, state: SessionState, *, sent_upto: int, now: datetime) -> SessionRecord:
        """Its connection ended: `DETACHED` (resumable) or `ENDED` (a `bye`)."""
        return self.model_copy(
            update={
                "state": state,
                "changed_at": now,
                "sent_upto": max(self.sent_upto, sent_upto),
            }
        )


def new_resume_token() -> str:
    """256 random bits: the secret that proves a client may resume its session."""
    return secrets.token_urlsafe(32)


def resume_hash(resume_token: str) -> str:
    return hashlib.sha256(resume_token.encode()).hexdigest()


# -- what the table found --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    record: SessionRecord
    revision: int


@dataclass(frozen=True, slots=True)
class Gone:
    """The record expired, or was removed; only its tombstone is left."""


Lookup = Found | Gone | None
"""`None`: no trace of the session at all."""


def addressable(lookup: Lookup) -> TypeGuard[Found]:
    """Whether messages may still be sent to the session: a record that is live or
    detached (resumable), not ended."""
    return isinstance(lookup, Found) and lookup.record.state is not SessionState.ENDED


# -- verdicts --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resume:
    """Resume this session; if `found.record` is live, its holder must let go."""

    found: Found


@dataclass(frozen=True, slots=True)
class StartFresh:
    reason: Literal["new", "unknown", "expired"]


@dataclass(frozen=True, slots=True)
class Refuse:
    """Close 4403: the session is not this client's to resume."""

    reason: str


Verdict = Resume | StartFresh | Refuse


def lookup_key(request: ResumeRequest) -> str | None:
    """The session id to look up, or `None` when it cannot be one of ours."""
    try:
        return session_token(request.session_id)
    except InvalidNameError:
        return None


def judge_resume(  # noqa: PLR0911 (one return per rule of the module docstring)
    request: ResumeRequest | None,
    user: str,
    lookup: Lookup,
    *,
    now: datetime,
    ttl: timedelta,
) -> Verdict:
    """Whether `user` may resume the session `request` names, given what the table holds."""
    if request is None:
        return StartFresh("new")
    if lookup is None:
        return StartFresh("unknown")
    if isinstance(lookup, Gone):
        return StartFresh("expired")
    record = lookup.record
    if record.user != user:
        return Refuse("the session belongs to another user")
    if not hmac.compare_digest(record.resume_hash, resume_hash(request.resume_token)):
        return Refuse("wrong resume token")
    if record.state is SessionState.ENDED:
        return StartFresh("expired")
    if record.state is SessionState.DETACHED and now - record.changed_at > ttl:
        return StartFresh("expired")
    return Resume(lookup)


# -- a takeover, between gateways --------------------------------------------


class ReleaseRequest(BusModel):
    """Asks the gateway holding `connection_id` to let go of `session_id`: a newer
    connection has claimed it."""

    session_id: str
    connection_id: str
    claimed_by: str
    """The gateway of the new connection (for the log)."""


class Released(BusModel):
    released: bool
    """`False`: the gateway did not hold that connection (any more)."""
    sent_upto: int = 0
    """The highest seq the released connection had sent."""
