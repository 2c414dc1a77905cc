"""One client connection: the handshake, then frames in and out.

Every rule and every decision to close lives in `ackwire.wire.guard.ConnectionGuard`
(sans I/O); this module only moves frames between the socket, the guard and the
bus, and carries out the guard's verdicts. Whatever ends a connection (`bye`, a
close by either side, a takeover, a drain, a client too slow, its token's `exp`,
a bus failure), the acks it read are confirmed before it lets go of the session.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

import structlog
from nats.js import JetStreamContext
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ackwire.bus.nodes import NodeDirectory
from ackwire.bus.receipts import Receipts
from ackwire.bus.session_queue import SessionQueue
from ackwire.errors import BusError, InvalidTokenError, ResumeRefusedError, SessionLostError
from ackwire.gateway import metrics
from ackwire.gateway.delivery import DeliveryPump
from ackwire.gateway.jobs import JobIntake
from ackwire.gateway.presence import PresenceNotices
from ackwire.gateway.sessions import HeldSessions, Opened
from ackwire.gateway.topics import ConnectionTopics, TopicHub
from ackwire.sessions.record import SessionState
from ackwire.settings import Settings
from ackwire.tokens import Identity, TokenVerifier
from ackwire.wire import encode
from ackwire.wire.codes import CloseCode, ErrorCode
from ackwire.wire.frames import (
    Ack,
    Bye,
    ClientFrame,
    Error,
    Frame,
    Hello,
    Ping,
    Pong,
    Refresh,
    Refreshed,
    Submit,
    Subscribe,
    Unsubscribe,
    Welcome,
)
from ackwire.wire.guard import Accept, Close, ConnectionGuard, Reject, TopicAdmission
from ackwire.wire.rate import TokenBucket

_log = structlog.get_logger("ackwire.gateway")

#: How long a connection that ends waits for the store to confirm the acks it read.
_CONFIRM_ON_CLOSE_S = 5.0
#: The same while another connection waits to take the session over.
_CONFIRM_ON_TAKEOVER_S = 1.0


@dataclass(frozen=True, slots=True)
class GatewayContext:
    """What every connection of one gateway shares."""

    name: str
    settings: Settings
    verifier: TokenVerifier
    sessions: HeldSessions
    topics: TopicHub
    presence: PresenceNotices
    queue: SessionQueue
    receipts: Receipts
    js: JetStreamContext
    nodes: NodeDirectory


@dataclass(frozen=True, slots=True)
class _Handlers:
    """What serves a welcomed connection's frames."""

    pump: DeliveryPump
    intake: JobIntake
    topics: ConnectionTopics


class ClientConnection:
    """Drives one WebSocket from upgrade to close."""

    def __init__(self, ws: ServerConnection, gateway: GatewayContext) -> None:
        self._ws = ws
        self._gateway = gateway
        self._guard = ConnectionGuard()
        self._connection_id = "c-" + secrets.token_hex(8)
        self._pump: DeliveryPump | None = None
        self._closing: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._identity = Identity(user="", topics=(), expires_at=0.0)  # set by the hello

    # -- Holding: what the gateway's sessions see of this connection ---------

    @property
    def connection_id(self) -> str:
        return self._connection_id

    @property
    def sent_upto(self) -> int:
        sent_here = 0 if self._pump is None else self._pump.highest_sent
        return max(self._guard.sent_before, sent_here)

    async def taken_over(self) -> int:
        """Another connection resumed the session: stop delivering and confirm the acks
        read so far, then close 4409. Returns the highest seq sent."""
        self._carry_out(self._guard.taken_over())
        if self._pump is not None:
            await self._pump.finish(within_s=_CONFIRM_ON_TAKEOVER_S)
        return self.sent_upto

    async def draining(self) -> None:
        """The gateway drains: close 1001 once the acks read are confirmed."""
        self._carry_out(self._guard.draining())
        if self._closing is not None:
            await self._closing

    def resync(self) -> None:
        """NATS came back: nothing is sent until a refresh confirms the session is still
        held here, and what the live feed carried meanwhile is read from the store."""
        if self._pump is not None:
            self._pump.fence()
            self._pump.resync()

    def held(self) -> None:
        if self._pump is not None:
            self._pump.unfence()

    def hold_unconfirmed(self) -> None:
        """In doubt and unable to find out: close 1011, so the client resumes where the
        session is known to be held."""
        if self._pump is not None and self._pump.fenced:
            self._carry_out(self._guard.bus_failed("could not confirm the session is held"))

    # -- the connection's life -----------------------------------------------

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(
            gateway=self._gateway.name, connection_id=self._connection_id
        )
        try:
            hello = await self._await_hello()
            identity = None if hello is None else self._authenticate(hello)
            if hello is not None and identity is not None:
                await self._serve(hello, identity)
        except ConnectionClosed:
            pass  # the client went away; what it was owed stays owed
        finally:
            if self._closing is not None:
                await self._closing
            self._guard.socket_lost()

    async def _await_hello(self) -> Hello | None:
        try:
            async with asyncio.timeout(self._gateway.settings.hello_timeout_s):
                data = await self._ws.recv()
        except TimeoutError:
            self._carry_out(self._guard.hello_timed_out())
            return None
        verdict = self._guard.receive_hello(data)
        if isinstance(verdict, Hello):
            return verdict
        self._carry_out(verdict)
        return None

    def _authenticate(self, hello: Hello) -> Identity | None:
        try:
            return self._gateway.verifier.verify(hello.token)
        except InvalidTokenError as exc:
            self._carry_out(self._guard.unauthorized(str(exc)))
            return None

    async def _open(self, hello: Hello, identity: Identity) -> Opened | None:
        self._identity = identity
        structlog.contextvars.bind_contextvars(user=identity.user)
        try:
            return await self._gateway.sessions.open(hello.resume, identity.user, self)
        except ResumeRefusedError as exc:
            self._carry_out(self._guard.refused(str(exc)))
        except SessionLostError:
            self._carry_out(self._guard.taken_over())
        except BusError as exc:
            _log.error("session.bus_unavailable", error=str(exc))
            self._carry_out(self._guard.bus_failed("bus unavailable"))
        return None

    async def _serve(self, hello: Hello, identity: Identity) -> None:
        opened = await self._open(hello, identity)
        if opened is None:
            return
        structlog.contextvars.bind_contextvars(session_id=opened.session_id)
        metrics.SESSIONS_OPENED.labels(outcome=opened.reason or "resumed").inc()
        metrics.CONNECTIONS.inc()
        topics: ConnectionTopics | None = None
        intake: JobIntake | None = None
        try:
            if not self._guard.opened(sent_before=opened.sent_before):
                return  # taken over before it began; 4409 is on its way
            topics = self._topics(identity)
            # Followed before the welcome: an event published once the client has its
            # welcome reaches it, snapshot or not.
            await topics.follow_restored(opened.topics)
            await self._send(self._welcome(opened))
            await self._gateway.presence.joined(identity.user, opened.session_id)
            _log.info(
                "session.opened",
                resumed=opened.resumed,
                reason=opened.reason,
                client=hello.client.name if hello.client else None,
            )
            self._expire_at(identity.expires_at)
            pump = self._new_pump(opened.session_id)
            try:
                await pump.start()
            except BusError as exc:
                _log.error("session.bus_unavailable", error=str(exc))
                self._carry_out(self._guard.bus_failed("bus unavailable"))
                return
            self._pump = pump
            await topics.start_restored()
            intake = self._intake(identity, opened)
            await self._read_frames(_Handlers(pump, intake, topics))
        finally:
            metrics.CONNECTIONS.dec()
            await self._end(opened, identity, topics, intake)

    def _topics(self, identity: Identity) -> ConnectionTopics:
        settings = self._gateway.settings
        return ConnectionTopics(
            self._gateway.topics,
            self._send,
            admission=TopicAdmission(
                identity.topics,
                max_topics=settings.max_topics,
                rate=TokenBucket(
                    rate=settings.subscribe_rate_per_s, burst=settings.subscribe_burst
                ),
            ),
            record=lambda topics: self._gateway.sessions.subscribed_to(self, topics),
            buffer=settings.topic_buffer,
            send_stall_s=settings.send_stall_s,
            on_overflow=lambda: self._carry_out(self._guard.too_slow()),
        )

    def _welcome(self, opened: Opened) -> Welcome:
        settings = self._gateway.settings
        return Welcome(
            session_id=opened.session_id,
            resume_token=opened.resume_token,
            resumed=opened.resumed,
            reason=opened.reason,
            gateway=self._gateway.name,
            heartbeat_s=settings.heartbeat_s,
            max_frame_bytes=settings.max_frame_bytes,
            window=settings.window,
        )

    def _new_pump(self, session_id: str) -> DeliveryPump:
        settings = self._gateway.settings
        return DeliveryPump(
            self._gateway.queue,
            self._gateway.receipts,
            session_id,
            self._send,
            window=settings.window,
            ack_wait=settings.ack_wait_s,
            retention_s=settings.retention_s,
            seen_before=self._guard.was_sent_before,
            on_failed=lambda _exc: self._carry_out(self._guard.bus_failed("deliveries failed")),
        )

    def _intake(self, identity: Identity, opened: Opened) -> JobIntake:
        settings = self._gateway.settings
        return JobIntake(
            self._gateway.js,
            self._gateway.nodes,
            TokenBucket(rate=settings.submit_rate_per_s, burst=settings.submit_burst),
            self._send,
            session_id=opened.session_id,
            user=identity.user,
        )

    def _expire_at(self, expires_at: float) -> None:
        """A connection lives no longer than its token."""
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(
            delay, lambda: self._carry_out(self._guard.token_expired())
        )

    async def _end(
        self,
        opened: Opened,
        identity: Identity,
        topics: ConnectionTopics | None,
        intake: JobIntake | None,
    ) -> None:
        """Confirm what was acked, then, unless the session moved on or ended, record
        that it is detached."""
        if self._expiry is not None:
            self._expiry.cancel()
        if intake is not None:
            await intake.finish()
        if topics is not None:
            await topics.leave_all()
        if self._pump is not None:
            await self._pump.finish(within_s=_CONFIRM_ON_CLOSE_S)
        close = self._guard.close_decided
        moved_on = close is not None and close.code is CloseCode.SESSION_TAKEN_OVER
        ended = close is not None and close.code is CloseCode.NORMAL
        if not (moved_on or ended):
            await self._gateway.sessions.detach(self)
        if not moved_on:
            await self._gateway.presence.left(identity.user, opened.session_id)
        _log.info("session.connection_ended", close_code=self._ws.close_code)

    async def _read_frames(self, handlers: _Handlers) -> None:
        async for data in self._ws:
            verdict = self._guard.receive(data)
            match verdict:
                case Close():
                    self._carry_out(verdict)
                case Reject(error=error):
                    await self._send(error)
                case Accept(frame=frame):
                    await self._handle(frame, handlers)

    async def _handle(self, frame: ClientFrame, handlers: _Handlers) -> None:
        match frame:
            case Ack():
                handlers.pump.acked(frame)
            case Ping():
                await self._send(Pong())
            case Bye():
                await self._bye(handlers.pump)
            case Submit():
                await handlers.intake.take(frame)
            case Subscribe():
                await handlers.topics.subscribe(frame)
            case Unsubscribe():
                await handlers.topics.unsubscribe(frame)
            case Refresh():
                await self._refresh(frame, handlers.topics)

    async def _refresh(self, frame: Refresh, topics: ConnectionTopics) -> None:
        """A newer token: the connection's new deadline, and its `topics` claim at once.
        A bad one changes nothing: the old token and its deadline stay."""
        try:
            identity = self._gateway.verifier.verify_refresh(frame.token, self._identity)
        except InvalidTokenError as exc:
            await self._send(Error(ref=frame.ref, code=ErrorCode.BAD_TOKEN, message=str(exc)))
            return
        self._identity = identity
        self._expire_at(identity.expires_at)
        await self._send(Refreshed(ref=frame.ref, exp=int(identity.expires_at)))
        await topics.reclaim(identity.topics)

    async def _bye(self, pump: DeliveryPump) -> None:
        """End the session for good, once the acks read before the `bye` are confirmed;
        what it is still owed stays stored, undelivered."""
        await pump.finish(within_s=_CONFIRM_ON_CLOSE_S)
        try:
            await self._gateway.sessions.let_go(self, SessionState.ENDED)
        except BusError as exc:
            _log.error("session.end_failed", error=str(exc))
            self._carry_out(self._guard.bus_failed("could not end the session"))
            return
        _log.info("session.ended")
        self._carry_out(self._guard.ended())

    async def _send(self, frame: Frame | str) -> None:
        """Send a frame (a `str`: one encoded already)."""
        if self._guard.may_send:  # once a close is decided, nothing more goes out
            if isinstance(frame, Error):
                metrics.REFUSALS.labels(code=frame.code.value).inc()
            await self._ws.send(frame if isinstance(frame, str) else encode(frame))

    def _carry_out(self, close: Close | None) -> None:
        """Close as decided (`None`: a close was decided already): once the acks read
        are confirmed, so that a client resuming at once finds them gone."""
        if close is None or self._closing is not None:
            return
        metrics.CLOSES.labels(code=str(close.code.value)).inc()
        _log.info("connection.closing", close_code=close.code.value, reason=close.reason)
        self._closing = asyncio.create_task(self._close(close), name="close")

    async def _close(self, close: Close) -> None:
        if self._pump is not None:
            await self._pump.finish(within_s=_CONFIRM_ON_CLOSE_S)
        await self._ws.close(close.code, close.reason)
