"""One client connection: the handshake, then frames in and out.

The rules live in `ackwire.wire.FrameGuard`; this module only moves frames
between the socket, the guard and the bus, and carries out the verdicts.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import structlog
from nats.js import JetStreamContext
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ackwire.bus.nodes import NodeDirectory
from ackwire.bus.receipts import Receipts
from ackwire.bus.session_queue import SessionQueue
from ackwire.gateway import metrics
from ackwire.gateway.delivery import DeliveryPump
from ackwire.gateway.jobs import JobIntake
from ackwire.gateway.presence import PresenceNotices
from ackwire.gateway.sessions import (
    BUS_ERRORS,
    HeldSessions,
    Opened,
    ResumeRefusedError,
    SessionLostError,
)
from ackwire.gateway.topics import ConnectionTopics, TopicHub
from ackwire.sessions.record import SessionState
from ackwire.settings import Settings
from ackwire.tokens import Identity, InvalidTokenError, TokenVerifier
from ackwire.wire import encode
from ackwire.wire.codes import CloseCode
from ackwire.wire.frames import (
    Ack,
    Bye,
    ClientFrame,
    Frame,
    Hello,
    Ping,
    Pong,
    Submit,
    Subscribe,
    Unsubscribe,
    Welcome,
)
from ackwire.wire.guard import Close, FrameGuard, Reject
from ackwire.wire.rate import TokenBucket

_log = structlog.get_logger("ackwire.gateway")


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
        self._guard = FrameGuard()
        self._connection_id = "c-" + secrets.token_hex(8)
        self._pump: DeliveryPump | None = None
        self._identity: Identity | None = None
        self._topics: ConnectionTopics | None = None
        self._taken_over = False
        self._ended = False
        self._closing: asyncio.Task[None] | None = None

    # -- Holding: what the gateway's sessions see of this connection ---------

    @property
    def connection_id(self) -> str:
        return self._connection_id

    @property
    def sent_upto(self) -> int:
        return 0 if self._pump is None else self._pump.highest_sent

    async def taken_over(self) -> int:
        """Another connection resumed the session: stop delivering now, then close 4409."""
        self._taken_over = True
        if self._pump is not None:
            await self._pump.stop()
        self._closing = asyncio.create_task(
            self._close(Close(CloseCode.SESSION_TAKEN_OVER, "session taken over"))
        )
        return self.sent_upto

    def _too_slow(self) -> None:
        """A topic's events piled up past the bound: close 4429 (the session stays
        resumable, and a resume sends each topic's snapshot again)."""
        if self._closing is None:
            _log.warning("topic.subscriber_too_slow")
            self._closing = asyncio.create_task(
                self._close(Close(CloseCode.TOO_SLOW, "too slow: events piled up; resume"))
            )

    # -- the connection's life -----------------------------------------------

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(
            gateway=self._gateway.name, connection_id=self._connection_id
        )
        try:
            hello = await self._await_hello()
            if hello is None:
                return
            identity = await self._authenticate(hello)
            if identity is None:
                return
            await self._serve(hello, identity)
        except ConnectionClosed:
            pass  # the client went away; what it was owed stays owed

    async def _await_hello(self) -> Hello | None:
        try:
            async with asyncio.timeout(self._gateway.settings.hello_timeout_s):
                data = await self._ws.recv()
        except TimeoutError:
            await self._close(self._guard.hello_timed_out())
            return None
        verdict = self._guard.receive_hello(data)
        if isinstance(verdict, Close):
            await self._close(verdict)
            return None
        return verdict

    async def _authenticate(self, hello: Hello) -> Identity | None:
        try:
            return self._gateway.verifier.verify(hello.token)
        except InvalidTokenError as exc:
            await self._close(self._guard.unauthorized(str(exc)))
            return None

    async def _open(self, hello: Hello, identity: Identity) -> Opened | None:
        self._identity = identity
        structlog.contextvars.bind_contextvars(user=identity.user)
        try:
            return await self._gateway.sessions.open(hello.resume, identity.user, self)
        except ResumeRefusedError as exc:
            await self._close(Close(CloseCode.FORBIDDEN, str(exc)))
        except SessionLostError as exc:
            await self._close(Close(CloseCode.SESSION_TAKEN_OVER, str(exc)))
        except BUS_ERRORS as exc:
            _log.error("session.bus_unavailable", error=str(exc) or type(exc).__name__)
            await self._close(Close(CloseCode.INTERNAL_ERROR, "bus unavailable; retry"))
        return None

    async def _serve(self, hello: Hello, identity: Identity) -> None:
        opened = await self._open(hello, identity)
        if opened is None:
            return
        structlog.contextvars.bind_contextvars(session_id=opened.session_id)
        self._guard.hello_accepted()
        metrics.SESSIONS_OPENED.labels(outcome=opened.reason or "resumed").inc()
        metrics.CONNECTIONS.inc()
        settings = self._gateway.settings
        try:
            if self._taken_over:
                return  # taken over before it began; 4409 is on its way
            self._topics = ConnectionTopics(
                self._gateway.topics,
                self._send,
                claims=identity.topics,
                record=lambda topics: self._gateway.sessions.subscribed_to(self, topics),
                buffer=settings.topic_buffer,
                max_topics=settings.max_topics,
                on_overflow=self._too_slow,
            )
            # Followed before the welcome: an event published once the client has its
            # welcome reaches it, snapshot or not.
            await self._topics.follow_restored(opened.topics)
            await self._send(
                Welcome(
                    session_id=opened.session_id,
                    resume_token=opened.resume_token,
                    resumed=opened.resumed,
                    reason=opened.reason,
                    gateway=self._gateway.name,
                    heartbeat_s=settings.heartbeat_s,
                    max_frame_bytes=settings.max_frame_bytes,
                    window=settings.window,
                )
            )
            await self._gateway.presence.joined(identity.user, opened.session_id)
            _log.info(
                "session.opened",
                resumed=opened.resumed,
                reason=opened.reason,
                client=hello.client.name if hello.client else None,
            )
            self._pump = DeliveryPump(
                self._gateway.queue,
                self._gateway.receipts,
                opened.session_id,
                self._send,
                window=settings.window,
                ack_wait=settings.ack_wait_s,
                sent_before=opened.sent_before,
            )
            intake = JobIntake(
                self._gateway.js,
                self._gateway.nodes,
                TokenBucket(rate=settings.submit_rate_per_s, burst=settings.submit_burst),
                session_id=opened.session_id,
                user=identity.user,
            )
            try:
                await self._pump.start()
            except BUS_ERRORS as exc:
                _log.error("session.bus_unavailable", error=str(exc) or type(exc).__name__)
                await self._close(Close(CloseCode.INTERNAL_ERROR, "bus unavailable; retry"))
                return
            await self._topics.start_restored()
            await self._read_frames(_Handlers(self._pump, intake, self._topics))
        finally:
            metrics.CONNECTIONS.dec()
            await self._end(opened)

    async def _end(self, opened: Opened) -> None:
        """Stop delivering; unless the session moved on, record that it is detached."""
        if self._topics is not None:
            await self._topics.leave_all()
        if self._pump is not None:
            await self._pump.stop()
        if self._closing is not None:
            await self._closing
        if not (self._taken_over or self._ended):
            try:
                await self._gateway.sessions.let_go(self, SessionState.DETACHED)
            except BUS_ERRORS as exc:
                _log.warning("session.detach_failed", error=str(exc) or type(exc).__name__)
        if not self._taken_over and self._identity is not None:  # moved on: not a leave
            await self._gateway.presence.left(self._identity.user, opened.session_id)
        _log.info("session.connection_ended", close_code=self._ws.close_code)

    async def _read_frames(self, handlers: _Handlers) -> None:
        async for data in self._ws:
            verdict = self._guard.receive(data)
            if isinstance(verdict, Close):
                await self._close(verdict)
                return
            if isinstance(verdict, Reject):
                metrics.BAD_FRAMES.inc()
                await self._send(verdict.error)
                continue
            if not await self._handle(verdict.frame, handlers):
                return

    async def _handle(self, frame: ClientFrame, handlers: _Handlers) -> bool:
        """Act on one accepted frame; `False` when the connection is over."""
        match frame:
            case Ping():
                await self._send(Pong())
            case Bye():
                await self._close(await self._bye(handlers.pump))
                return False
            case Ack():
                handlers.pump.acked(frame)
            case Submit():
                await self._send(await handlers.intake.submit(frame))
            case Subscribe():
                await handlers.topics.subscribe(frame)
            case Unsubscribe():
                await handlers.topics.unsubscribe(frame)
        return True

    async def _bye(self, pump: DeliveryPump) -> Close:
        """End the session for good; what it is still owed stays stored, undelivered."""
        await pump.stop()
        try:
            await self._gateway.sessions.let_go(self, SessionState.ENDED)
        except BUS_ERRORS as exc:
            _log.error("session.end_failed", error=str(exc) or type(exc).__name__)
            return Close(CloseCode.INTERNAL_ERROR, "could not end the session; retry")
        self._ended = True
        _log.info("session.ended")
        return Close(CloseCode.NORMAL, "bye")

    async def _send(self, frame: Frame) -> None:
        await self._ws.send(encode(frame))

    async def _close(self, close: Close) -> None:
        metrics.CLOSES.labels(code=str(close.code.value)).inc()
        _log.info("connection.closing", close_code=close.code.value, reason=close.reason)
        await self._ws.close(close.code, close.reason)
