"""The sessions this gateway holds: opening, resuming, taking over, letting go.

One live connection per session, cluster-wide, is settled on the bus, never
in memory: a connection holds a session when its compare-and-set on the
session's record landed. The gateway that held the session before is then
asked to let go (close 4409) and answers with what it had sent, before the
new connection delivers anything. If that gateway is dead there is nobody to
ask; if it was cut off and missed the request, it finds out at its next
refresh (or as soon as NATS is back), when its own compare-and-set fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.bus.retry import retried
from ackwire.bus.session_queue import SessionQueue
from ackwire.bus.subjects import new_session_id
from ackwire.errors import (
    BusError,
    ResumeRefusedError,
    SessionChangedError,
    SessionLostError,
)
from ackwire.gateway import metrics
from ackwire.lifecycle import BackgroundTasks, cancel_and_wait
from ackwire.sessions.gateways import GatewayDirectory
from ackwire.sessions.record import (
    Found,
    Holder,
    Refuse,
    Released,
    ReleaseRequest,
    Resume,
    SessionRecord,
    SessionState,
    StartFresh,
    judge_resume,
    lookup_key,
    new_resume_token,
)
from ackwire.sessions.table import SessionTable
from ackwire.sessions.users import UserSessions
from ackwire.wire.frames import ResumeRequest

_log = structlog.get_logger("ackwire.gateway")

_RELEASE_TIMEOUT_S = 2.0
#: How long a resume waits for a holder that is alive (its lease) but slow to let go.
_RELEASE_PATIENCE_S = 15.0
#: The status NATS answers a request with when no one is subscribed to its subject.
_NO_RESPONDERS = "503"
_CLAIM_ATTEMPTS = 3
_REFRESH_BATCH = 256
_REFRESH_RETRY_S = 30.0


class Holding(Protocol):
    """A connection, as the sessions it holds see it."""

    @property
    def connection_id(self) -> str: ...

    @property
    def sent_upto(self) -> int:
        """The highest seq this connection has sent."""

    async def taken_over(self) -> int:
        """Stop delivering at once, close 4409; the highest seq sent."""

    async def draining(self) -> None:
        """Close 1001 once the acks read are confirmed."""

    def resync(self) -> None:
        """NATS is back: hold deliveries until the session is known to be still held
        here, and read the store again (the live feed may have lost messages)."""

    def held(self) -> None:
        """A refresh confirmed the session is still held here: deliver again."""

    def hold_unconfirmed(self) -> None:
        """A refresh could not tell whether the session is still held here."""


@dataclass(frozen=True, slots=True)
class Opened:
    session_id: str
    resume_token: str
    resumed: bool
    reason: Literal["new", "unknown", "expired"] | None
    sent_before: int
    """Messages up to this seq may have been sent before: their next send is a redelivery."""
    topics: tuple[str, ...] = ()
    """The subscriptions to restore (a resumed session's)."""


@dataclass(slots=True)
class _Hold:
    connection: Holding
    record: SessionRecord
    revision: int


def _now() -> datetime:
    return datetime.now(UTC)


class HeldSessions:
    def __init__(
        self,
        nc: Client,
        table: SessionTable,
        users: UserSessions,
        queue: SessionQueue,
        gateways: GatewayDirectory,
        *,
        gateway: str,
        incarnation: str,
        ttl_s: float,
    ) -> None:
        self._nc = nc
        self._table = table
        self._users = users
        self._queue = queue
        self._gateways = gateways
        self._gateway = gateway
        self._incarnation = incarnation
        self._ttl = timedelta(seconds=ttl_s)
        self._held: dict[str, _Hold] = {}
        # Connections that ended while the store could not record their detach: retried
        # at every refresh, so a session does not look online for a TTL.
        self._undetached: dict[str, _Hold] = {}
        self._release_sub: Subscription | None = None
        self._releasing = BackgroundTasks()
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._release_sub = await self._nc.subscribe(
            subjects.release_subject(self._gateway), cb=self._on_release
        )
        self._refresher = asyncio.create_task(self._keep_fresh(), name="session refresh")

    async def stop(self) -> None:
        await cancel_and_wait(self._refresher)
        await self._releasing.finish()
        if self._release_sub is not None:
            try:
                with bus_errors("unsubscribing from release requests"):
                    await self._release_sub.unsubscribe()
            except BusError as exc:
                _log.debug("sessions.unsubscribe_failed", error=str(exc))

    async def drain(self) -> None:
        """Close every connection 1001, each once the acks it read are confirmed."""
        await asyncio.gather(*(hold.connection.draining() for hold in list(self._held.values())))

    def resync(self) -> None:
        """NATS is back: every connection reads its session's store again."""
        for hold in list(self._held.values()):
            hold.connection.resync()

    # -- a connection's life -------------------------------------------------

    async def open(self, resume: ResumeRequest | None, user: str, connection: Holding) -> Opened:
        """Start a session for `connection`, or resume the one `resume` names.

        Raises `ResumeRefusedError` (4403), `SessionLostError` (4409), or a bus error."""
        holder = Holder(self._gateway, self._incarnation, connection.connection_id)
        if resume is None:
            return await self._start(user, connection, holder, "new")
        key = lookup_key(resume)
        lookup = None if key is None else await self._table.lookup(key)
        for _ in range(_CLAIM_ATTEMPTS):
            verdict = judge_resume(resume, user, lookup, now=_now(), ttl=self._ttl)
            match verdict:
                case Refuse(reason=reason):
                    raise ResumeRefusedError(reason)
                case StartFresh(reason=reason):
                    return await self._start(user, connection, holder, reason)
                case Resume(found=found):
                    try:
                        return await self._resume(found, resume, connection, holder)
                    except SessionChangedError:
                        lookup = await self._table.lookup(found.record.session_id)
                        if _claimed_by_another(lookup, found):
                            raise SessionLostError("another connection resumed it first") from None
        raise SessionLostError("the session kept changing; try again")

    async def let_go(self, connection: Holding, state: SessionState) -> None:
        """The connection ended (`DETACHED`) or said `bye` (`ENDED`). Retries bus errors
        for a while, then raises them; a session someone else holds is left alone."""
        hold = self._held.pop(connection.connection_id, None)
        if hold is None:
            return  # taken over: no longer ours to change
        await self._let_go(hold, state, connection.sent_upto)

    async def detach(self, connection: Holding) -> None:
        """The connection ended: record the session detached. When the store cannot say
        so now, the next refreshes try again."""
        hold = self._held.get(connection.connection_id)
        try:
            await self.let_go(connection, SessionState.DETACHED)
        except BusError as exc:
            _log.warning("session.detach_failed", error=str(exc))
            if hold is not None:
                self._undetached[connection.connection_id] = hold

    async def _let_go(self, hold: _Hold, state: SessionState, sent_upto: int) -> None:
        session = hold.record

        async def write() -> bool:
            ours = await self._write_while_ours(
                hold, lambda record: record.let_go(state, sent_upto=sent_upto, now=_now())
            )
            if not ours:
                return False  # taken over meanwhile: the new holder keeps the index
            if state is SessionState.ENDED:
                await self._users.forget(session.user, session.session_id)
            else:
                await self._users.keep(session.user, session.session_id)
            return True

        if await retried(write, attempts=5, within_s=10.0):
            _log.info("session.let_go", state=state.value, sent_upto=sent_upto)

    async def subscribed_to(self, connection: Holding, topics: tuple[str, ...]) -> None:
        """Record the session's subscriptions, to restore them on a resume. Raises bus
        errors; a session no longer held is left alone."""
        hold = self._held.get(connection.connection_id)
        if hold is not None:
            await self._write_while_ours(
                hold, lambda record: record.model_copy(update={"topics": topics})
            )

    async def refresh(self) -> None:
        """Rewrite every held record: keeps them from expiring, and finds any this
        gateway lost while it could not hear (their connections are closed 4409)."""
        holds = list(self._held.values())
        for start in range(0, len(holds), _REFRESH_BATCH):
            batch = holds[start : start + _REFRESH_BATCH]
            outcomes = await asyncio.gather(
                *(self._refresh_one(hold) for hold in batch), return_exceptions=True
            )
            for outcome in outcomes:  # one session's bug must not stop the others' refresh
                if isinstance(outcome, Exception):
                    _log.error("session.refresh_crashed", error=repr(outcome), exc_info=outcome)
        for connection_id, hold in list(self._undetached.items()):
            try:
                await self._let_go(hold, SessionState.DETACHED, hold.connection.sent_upto)
            except BusError as exc:
                _log.warning("session.detach_failed", error=str(exc))
            else:
                del self._undetached[connection_id]

    # -- internals -----------------------------------------------------------

    async def _start(
        self,
        user: str,
        connection: Holding,
        holder: Holder,
        reason: Literal["new", "unknown", "expired"],
    ) -> Opened:
        token = new_resume_token()
        record = SessionRecord.opened(
            session_id=new_session_id(), user=user, resume_token=token, holder=holder, now=_now()
        )
        revision = await self._table.create(record)
        self._held[connection.connection_id] = _Hold(connection, record, revision)
        await self._index(record)
        return Opened(record.session_id, token, resumed=False, reason=reason, sent_before=0)

    async def _resume(
        self, found: Found, resume: ResumeRequest, connection: Holding, holder: Holder
    ) -> Opened:
        before = found.record
        record = before.claimed(holder, _now())
        revision = await self._table.replace(record, revision=found.revision)
        hold = _Hold(connection, record, revision)
        self._held[connection.connection_id] = hold
        try:
            # The session is this connection's from here: the previous holder is told
            # first, before anything else can fail.
            sent_before = max(before.sent_upto, resume.last_seq or 0)
            if before.state is SessionState.LIVE:
                released = await self._ask_to_release(before)
                # Nobody can say what a dead holder sent: whatever was stored by now may
                # have reached the client, so its next send counts as a redelivery.
                sent = (
                    await self._queue.last_seq(record.session_id) if released is None else released
                )
                sent_before = max(sent_before, sent)
        except BusError:
            await self._abandon(hold)
            raise
        await self._index(record)
        _log.info(
            "session.resumed",
            session_id=record.session_id,
            previous_gateway=before.gateway,
            previous_state=before.state.value,
        )
        return Opened(
            record.session_id,
            resume.resume_token,
            resumed=True,
            reason=None,
            sent_before=sent_before,
            topics=record.topics,
        )

    async def _index(self, record: SessionRecord) -> None:
        """List the session under its user. Best effort: the next refresh lists it again."""
        try:
            await self._users.keep(record.user, record.session_id)
        except BusError as exc:
            _log.warning("session.not_indexed", error=str(exc))

    async def _abandon(self, hold: _Hold) -> None:
        """The connection got the session but cannot be welcomed (the bus failed): give the
        session up again, so it does not look held by a connection about to close."""
        self._held.pop(hold.connection.connection_id, None)
        try:
            await self._write_while_ours(
                hold,
                lambda record: record.let_go(SessionState.DETACHED, sent_upto=0, now=_now()),
            )
        except BusError as exc:
            # Still marked live on this gateway; whoever resumes next asks it to let go,
            # and it answers that it holds nothing.
            _log.warning("session.abandon_failed", error=str(exc))

    async def _ask_to_release(self, before: SessionRecord) -> int | None:
        """Have the previous holder stop and close 4409; the highest seq it had sent, or
        `None` when it cannot say (it is dead, or holds nothing any more).

        A holder whose lease is alive but that does not answer in time is slow, not
        dead: its answer is waited for until it comes or the lease lapses. Past
        `_RELEASE_PATIENCE_S` the resume fails (`BusUnavailableError`), rather than
        deliver beside a connection that may still be delivering."""
        request = ReleaseRequest(
            session_id=before.session_id,
            connection_id=before.connection_id,
            claimed_by=self._gateway,
        )
        with bus_errors(f"asking {before.gateway} to release"):
            answers = await self._nc.subscribe(self._nc.new_inbox(), max_msgs=1)
            try:
                await self._nc.publish(
                    subjects.release_subject(before.gateway),
                    request.to_bytes(),
                    reply=answers.subject,
                )
                reply = await self._await_release(answers, before)
            finally:
                await answers.unsubscribe()
        if reply is None:
            return None  # it died, or is cut off from NATS: see `_await_release`
        try:
            released = Released.model_validate_json(reply.data)
        except ValidationError as exc:
            _log.warning("session.bad_release_answer", error=str(exc))
            return None
        # Not held there any more: its connection ended just now, and what it had
        # sent is not on record (the detach lost its compare-and-set to ours).
        return released.sent_upto if released.released else None

    async def _await_release(self, answers: Subscription, before: SessionRecord) -> Msg | None:
        """The answer to a release request, waited for as long as the holder's lease is
        alive (bounded by `_RELEASE_PATIENCE_S`); `None` when nobody is there to answer:
        its lease lapsed, or NATS says nobody listens (it died, or is cut off from NATS;
        cut off it delivers nothing, and once back it fences its deliveries until its
        refresh finds the session gone)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + _RELEASE_PATIENCE_S
        while self._gateways.alive(before.gateway, before.incarnation):
            try:
                reply = await answers.next_msg(timeout=_RELEASE_TIMEOUT_S)
            except TimeoutError:
                if loop.time() >= give_up_at:
                    raise
                _log.info("session.release_waiting", previous_gateway=before.gateway)
                continue
            if (reply.headers or {}).get("Status") == _NO_RESPONDERS:
                return None
            return reply
        return None

    async def _on_release(self, msg: Msg) -> None:
        # Answered side by side: one slow takeover must not hold up the others.
        self._releasing.spawn(self._release(msg), name="release")

    async def _release(self, msg: Msg) -> None:
        try:
            request = ReleaseRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            _log.warning("session.bad_release_request", error=str(exc))
            return
        hold = self._held.pop(request.connection_id, None)
        sent_upto = 0 if hold is None else await hold.connection.taken_over()
        if hold is not None:
            metrics.TAKEOVERS.inc()
            _log.info(
                "session.taken_over",
                session_id=request.session_id,
                connection_id=request.connection_id,
                claimed_by=request.claimed_by,
            )
        try:
            with bus_errors("answering a release request"):
                await msg.respond(
                    Released(released=hold is not None, sent_upto=sent_upto).to_bytes()
                )
        except BusError as exc:  # the claimant learns it from our record, or our lease
            _log.warning("session.release_unanswered", error=str(exc))

    async def _keep_fresh(self) -> None:
        # A record not rewritten within the TTL expires: four refreshes per TTL.
        every = self._ttl.total_seconds() / 4
        while True:
            await asyncio.sleep(every)
            await self.refresh()

    async def _refresh_one(self, hold: _Hold) -> None:
        sent_upto = hold.connection.sent_upto
        try:
            # Retried for a while: a refresh right after a reconnect may meet a cluster
            # still electing leaders, and the next one is a quarter of a TTL away.
            ours = await retried(
                lambda: self._write_while_ours(
                    hold,
                    lambda record: record.model_copy(
                        update={"sent_upto": max(record.sent_upto, sent_upto)}
                    ),
                ),
                attempts=None,
                within_s=_REFRESH_RETRY_S,
            )
        except BusError as exc:
            _log.warning("session.refresh_failed", error=str(exc))
            hold.connection.hold_unconfirmed()
            return
        if ours:
            hold.connection.held()
            await self._index(hold.record)
        elif self._held.pop(hold.connection.connection_id, None) is not None:
            metrics.TAKEOVERS.inc()
            _log.info("session.lost", session_id=hold.record.session_id)
            await hold.connection.taken_over()

    async def _write_while_ours(
        self, hold: _Hold, change: Callable[[SessionRecord], SessionRecord]
    ) -> bool:
        """Write `change(record)` as long as the record still names this connection;
        `False` once it names another (the session was taken over)."""
        for _ in range(_CLAIM_ATTEMPTS):
            record = change(hold.record)
            try:
                hold.revision = await self._table.replace(record, revision=hold.revision)
            except SessionChangedError:
                lookup = await self._table.lookup(hold.record.session_id)
                if not isinstance(lookup, Found) or (
                    lookup.record.connection_id != hold.connection.connection_id
                    or lookup.record.state is not SessionState.LIVE
                ):
                    return False
                hold.record, hold.revision = lookup.record, lookup.revision
            else:
                hold.record = record
                return True
        return False


def _claimed_by_another(lookup: object, found: Found) -> bool:
    """After a lost compare-and-set: did a newer connection claim the session?"""
    return (
        isinstance(lookup, Found)
        and lookup.record.state is SessionState.LIVE
        and lookup.record.connection_id != found.record.connection_id
    )
