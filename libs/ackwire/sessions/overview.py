"""The operator's views: who is connected where, and what is owed to whom.

`ackwire sessions` and `ackwire undelivered` print these; tests read them too.
Both read the whole of what they show: they are for operators, not hot paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamState
from pydantic import BaseModel

from ackwire.bus import subjects
from ackwire.bus.boundary import translated
from ackwire.bus.session_queue import SessionQueue
from ackwire.sessions.gateways import GatewayDirectory
from ackwire.sessions.record import Found, SessionState, addressable
from ackwire.sessions.table import SessionTable
from ackwire.sessions.users import UserSessions

_READ_BATCH = 256


class SessionSummary(BaseModel):
    session_id: str
    user: str
    state: SessionState
    gateway: str
    """The gateway holding it (`live`), or the last one that did."""
    connected: bool
    """A connection holds it now: the record is live and its gateway's lease is alive."""
    since: datetime
    owed: int
    """Messages stored for it and not yet acked."""


class SessionPresence(BaseModel):
    session_id: str
    state: SessionState
    gateway: str
    connected: bool
    since: datetime


class UserPresence(BaseModel):
    user: str
    online: bool
    """At least one of the user's sessions is held by a connection now."""
    sessions: list[SessionPresence]
    """Every live or resumable session of the user."""


class UndeliveredMessage(BaseModel):
    session_id: str
    user: str | None
    id: str
    seq: int
    kind: str
    job_id: str | None
    age_s: float


class KindBacklog(BaseModel):
    kind_consumer: str
    waiting: int
    """Jobs stored that no node of the kind took yet."""
    running: int
    """Jobs a node took and has not answered for yet."""


class StackOverview(BaseModel):
    """The whole stack at one moment, as `ackwire top` shows it."""

    at: datetime
    gateways: list[str]
    """The gateways whose lease is alive."""
    sessions: list[SessionSummary]
    stored_total: int
    """Messages ever stored for sessions (the queue stream's last sequence)."""
    owed_total: int
    oldest_owed_at: datetime | None
    jobs: list[KindBacklog]


@dataclass(frozen=True, slots=True)
class SessionCount:
    live: int
    """Held by a connection now (the record is live and its gateway's lease alive)."""
    detached: int
    """Waiting for a resume: the last connection ended without `bye`, or its gateway died."""


@contextlib.asynccontextmanager
async def _gateways_alive(js: JetStreamContext) -> AsyncIterator[GatewayDirectory]:
    """The gateways' leases, followed for the block."""
    gateways = GatewayDirectory()
    await gateways.follow(await js.key_value(subjects.GATEWAYS_BUCKET))
    try:
        yield gateways
    finally:
        await gateways.stop()


@translated("counting the sessions")
async def session_count(js: JetStreamContext) -> SessionCount:
    """How many sessions are live and detached now. It reads every record (and the
    gateways' leases): each scheduler does, once a sweep."""
    live = detached = 0
    async with _gateways_alive(js) as gateways:
        async for found in (await SessionTable.open(js)).every():
            if gateways.connected(found.record):
                live += 1
            elif addressable(found):
                detached += 1
    return SessionCount(live=live, detached=detached)


async def session_summaries(nc: Client) -> list[SessionSummary]:
    """Every session on record, oldest change first."""
    summaries, _, _ = await _sessions_now(nc.jetstream())
    return summaries


async def stack_overview(nc: Client) -> StackOverview:
    """Gateways, sessions and what each is owed, the queue's totals, and each kind's jobs."""
    js = nc.jetstream()
    summaries, alive, state = await _sessions_now(js)
    first = await SessionQueue(nc, js).read_subject(subjects.SESSION_SUBJECTS, after=0, limit=1)
    return StackOverview(
        at=datetime.now(UTC),
        gateways=alive,
        sessions=summaries,
        stored_total=state.last_seq,
        owed_total=state.messages,
        oldest_owed_at=first.messages[0].delivery.created_at if first.messages else None,
        jobs=await _job_backlogs(nc),
    )


async def _sessions_now(
    js: JetStreamContext,
) -> tuple[list[SessionSummary], list[str], StreamState]:
    """Every session on record (oldest change first), the gateways alive, and the state of
    the queue stream the sessions' owed counts were read from."""
    async with _gateways_alive(js) as gateways:
        info = await js.stream_info(
            subjects.SESSIONS_STREAM, subjects_filter=subjects.SESSION_SUBJECTS
        )
        owed = dict(info.state.subjects or {})
        table = await SessionTable.open(js)
        summaries = [
            SessionSummary(
                session_id=found.record.session_id,
                user=found.record.user,
                state=found.record.state,
                gateway=found.record.gateway,
                connected=gateways.connected(found.record),
                since=found.record.changed_at,
                owed=owed.get(subjects.session_subject(found.record.session_id), 0),
            )
            async for found in table.every()
        ]
        alive = sorted(gateways.gateways)
    return sorted(summaries, key=lambda summary: summary.since), alive, info.state


async def _job_backlogs(nc: Client) -> list[KindBacklog]:
    consumers = await nc.jetstream().consumers_info(subjects.JOBS_STREAM)
    return [
        KindBacklog(
            kind_consumer=c.name, waiting=c.num_pending or 0, running=c.num_ack_pending or 0
        )
        for c in sorted(consumers, key=lambda c: c.name)
        if c.name.startswith("work-")
    ]


async def owed_since(nc: Client, session_ids: Iterable[str]) -> dict[str, datetime]:
    """When the oldest message still owed to each of these sessions was stored (one read
    each: for a screenful of sessions, not all); a session owed nothing is left out."""
    queue = SessionQueue(nc, nc.jetstream())
    since = {}
    for session_id in session_ids:
        read = await queue.read_subject(subjects.session_subject(session_id), after=0, limit=1)
        if read.messages:
            since[session_id] = read.messages[0].delivery.created_at
    return since


async def longest_owed(nc: Client, sessions: int) -> dict[str, datetime]:
    """Up to `sessions` sessions owed the oldest messages of all, oldest first, and when
    each one's oldest was stored. Read from the front of the queue (the oldest few hundred
    messages), so its cost does not grow with what is owed."""
    queue = SessionQueue(nc, nc.jetstream())
    front = await queue.read_subject(subjects.SESSION_SUBJECTS, after=0, limit=_READ_BATCH)
    since: dict[str, datetime] = {}
    for stored in front.messages:
        since.setdefault(stored.delivery.session_id, stored.delivery.created_at)
        if len(since) == sessions:
            break
    return since


async def user_presence(nc: Client, user: str) -> UserPresence:
    """Whether `user` is online, and on which sessions (read from the records and the
    gateways' leases: the truth, not a cache)."""
    js = nc.jetstream()
    async with _gateways_alive(js) as gateways:
        table = await SessionTable.open(js)
        sessions = []
        for session_id in await (await UserSessions.open(js)).of(user):
            found = await table.lookup(session_id)
            if not addressable(found):
                continue
            sessions.append(
                SessionPresence(
                    session_id=session_id,
                    state=found.record.state,
                    gateway=found.record.gateway,
                    connected=gateways.connected(found.record),
                    since=found.record.changed_at,
                )
            )
    return UserPresence(user=user, online=any(s.connected for s in sessions), sessions=sessions)


async def undelivered(
    nc: Client, session_id: str | None = None
) -> AsyncIterator[UndeliveredMessage]:
    """Every message stored and not acked (of one session, or of all), oldest first."""
    js = nc.jetstream()
    queue = SessionQueue(nc, js)
    table = await SessionTable.open(js)
    subject = (
        subjects.SESSION_SUBJECTS if session_id is None else subjects.session_subject(session_id)
    )
    users: dict[str, str | None] = {}
    after = 0
    now = datetime.now(UTC)
    while True:
        read = await queue.read_subject(subject, after=after, limit=_READ_BATCH)
        for stored in read.messages:
            delivery = stored.delivery
            user = delivery.user
            if user is None:
                if delivery.session_id not in users:
                    found = await table.lookup(delivery.session_id)
                    users[delivery.session_id] = (
                        found.record.user if isinstance(found, Found) else None
                    )
                user = users[delivery.session_id]
            yield UndeliveredMessage(
                session_id=delivery.session_id,
                user=user,
                id=delivery.id,
                seq=stored.seq,
                kind=delivery.kind,
                job_id=delivery.job_id,
                age_s=round((now - delivery.created_at).total_seconds(), 3),
            )
        if read.complete or not read.messages:
            return
        after = read.messages[-1].seq
