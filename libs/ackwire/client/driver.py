"""The client's asyncio layer: sockets, timers and the application's awaitables.

`Client` carries out `ClientMachine`'s actions and feeds it what happened; it
decides nothing itself. websockets' exceptions stop here: a connect that failed
or a socket that died is a `socket_closed` for the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog
from pydantic import JsonValue
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ackwire.client.actions import (
    Action,
    CancelTimer,
    CloseSocket,
    JobAccepted,
    JobDelivery,
    KeepSession,
    MessageDelivery,
    Notice,
    OpenSocket,
    RenewToken,
    RequestFailed,
    SendFrame,
    SessionReset,
    StartTimer,
    StateChanged,
    Timer,
    TopicEnded,
    TopicEvent,
    TopicGapTold,
    TopicSubscribed,
)
from ackwire.client.dedupe import SeenIds
from ackwire.client.exceptions import ClientClosedError, LostWork
from ackwire.client.handles import Gap, Job, ProgressCallback, Subscription
from ackwire.client.machine import ClientMachine
from ackwire.client.phases import Phase
from ackwire.client.policy import Backoff
from ackwire.client.store import ClientState
from ackwire.errors import AckwireError
from ackwire.lifecycle import cancel_and_wait
from ackwire.wire.codec import encode
from ackwire.wire.frames import SUBPROTOCOL, ClientInfo, Deliver, Event

_log = structlog.get_logger("ackwire.client")

TokenSource = Callable[[], Awaitable[str]]
#: A token callback that does not answer within this long has failed (and is asked again).
RENEW_TIMEOUT_S = 30.0
#: After `bye`, the gateway's close is awaited this long.
BYE_TIMEOUT_S = 5.0


class Client:
    """An ackwire client: it connects, resumes, dedupes, acks and refreshes by itself.

        async with Client("ws://127.0.0.1:8765", token=token, refresh=new_token) as c:
            result = await c.run("translate", {"text": "你好", "source": "zh", "target": "en"})

    `url`: one gateway or several, tried in turn. `refresh`: an async callable giving a
    fresh token, asked ahead of the token's `exp` and after a 4401; without it the
    client stops (`InvalidTokenError`) when its token is refused. `state_path`: an
    SQLite file of this client's own, keeping its session and the delivery ids it
    handled across process restarts: a process started again on it resumes the
    session, is sent what it is owed, and is handed nothing twice.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str,
        refresh: TokenSource | None = None,
        on_state_change: Callable[[StateChanged], None] | None = None,
        on_session_reset: Callable[[LostWork], None] | None = None,
        state_path: Path | None = None,
        backoff: Backoff | None = None,
        open_timeout_s: float = 10.0,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        for each in urls:
            try:
                parse_uri(each)
            except InvalidURI as exc:
                raise ValueError(f"not a WebSocket URL: {each!r} ({exc})") from None
        self._state = None if state_path is None else ClientState(state_path)
        self._machine = ClientMachine(
            urls,
            token,
            can_renew=refresh is not None,
            seen=SeenIds(state=self._state),
            session=None if self._state is None else self._state.session(),
            backoff=backoff,
            nonce=f"{uuid.uuid4().hex[:12]}-",
            client=ClientInfo(name="ackwire-py", version=version("ackwire")),
            wall_clock=time.time,
        )
        self._refresh = refresh
        self._on_state_change = on_state_change
        self._on_session_reset = on_session_reset
        self._open_timeout_s = open_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws: ClientConnection | None = None
        self._outbox: deque[str] = deque()  # bounded by the machine's bounds on requests
        self._outbox_ready = asyncio.Event()
        self._connection: asyncio.Task[None] | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._timers: dict[Timer, asyncio.TimerHandle] = {}
        self._jobs: dict[str, Job] = {}
        self._subscriptions: dict[str, Subscription] = {}  # by topic
        self._subscribe_refs: dict[str, str] = {}  # ref -> topic
        self._messages: deque[Deliver] = deque()  # bounded: the machine's MAX_IN_HAND
        self._messages_changed = asyncio.Event()
        self._welcomed = asyncio.Event()
        self._closed = asyncio.Event()

    # -- what it is ----------------------------------------------------------------------

    @property
    def state(self) -> Phase:
        return self._machine.phase

    @property
    def gateway(self) -> str | None:
        """The gateway holding the connection, while connected."""
        return self._machine.gateway

    @property
    def session_id(self) -> str | None:
        return self._machine.session_id

    @property
    def closed_reason(self) -> Exception | None:
        """Why the client stopped, once it has."""
        return self._machine.closed_reason

    async def wait_connected(self) -> None:
        """Wait until welcomed; raises `ClientClosedError` if the client stops first."""
        while self._machine.phase is not Phase.WELCOMED:
            self._raise_if_closed()
            self._welcomed.clear()
            await self._welcomed.wait()

    # -- the application's requests -------------------------------------------------------

    async def submit(
        self,
        kind: str,
        payload: dict[str, JsonValue],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a deadline the machine keeps)
        idempotency_key: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Job:
        """Submit a job and wait until it is stored; `timeout` bounds the whole job."""
        now = self._now()
        deadline = None if timeout is None else now + timeout
        ref, actions = self._machine.submit(
            kind, payload, now, deadline=deadline, idempotency_key=idempotency_key
        )
        job = self._jobs[ref] = Job(ref, on_progress)
        self._apply(actions)
        await job.accepted()
        return job

    async def run(
        self,
        kind: str,
        payload: dict[str, JsonValue],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a deadline the machine keeps)
        on_progress: ProgressCallback | None = None,
    ) -> JsonValue:
        """Submit a job and return its result's `data` (see `Job.result` for failures)."""
        job = await self.submit(kind, payload, timeout=timeout, on_progress=on_progress)
        return await job.result()

    async def subscribe(
        self,
        topic: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a deadline the machine keeps)
    ) -> AsyncIterator[Event | Gap]:
        """Follow `topic`: its snapshot first, then live events, across every resume; a
        `Gap` says which events may never come. Unsubscribes when the loop ends."""
        now = self._now()
        subscription = Subscription(topic)
        ref, actions = self._machine.subscribe(
            topic, now, deadline=None if timeout is None else now + timeout
        )
        self._subscriptions[topic] = subscription
        self._subscribe_refs[ref] = topic
        self._apply(actions)
        try:
            await asyncio.shield(subscription.subscribed)
            async for item in subscription.items():
                yield item
        except ClientClosedError:
            if not self._machine.closed_by_application:
                raise
        finally:
            if self._subscriptions.get(topic) is subscription:
                del self._subscriptions[topic]
                self._apply(self._machine.unsubscribe(topic, self._now()))

    async def messages(self) -> AsyncIterator[Deliver]:
        """Every `message` delivery, once each, in order. Each is acked when the loop
        body that received it has finished (at the next iteration)."""
        while True:
            while self._messages:
                message = self._messages.popleft()
                yield message
                self._apply(self._machine.handled(message.id))
            if self._machine.closed_by_application:
                return
            self._raise_if_closed()
            self._messages_changed.clear()
            await self._messages_changed.wait()

    # -- life ----------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._apply(self._machine.start(self._now()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, *, end_session: bool = True) -> None:
        """End the session (`bye`) and stop; what is unacked stays owed to nobody. With
        `end_session=False`, stop and leave the session resumable for its TTL (what is
        unacked stays owed to it): a process started again on the same `state_path`
        resumes it, as after a crash."""
        self._apply(self._machine.close(self._now(), end_session=end_session))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BYE_TIMEOUT_S):
                await self._closed.wait()
        if not self._closed.is_set():  # the gateway never closed after bye
            self._apply(self._machine.socket_closed(None, "no close after bye", self._now()))
        await cancel_and_wait(self._connection)
        await cancel_and_wait(self._renewal)
        if self._state is not None:
            self._state.close()

    # -- carrying out the machine's actions -------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _raise_if_closed(self) -> None:
        reason = self._machine.closed_reason
        if reason is not None:
            raise ClientClosedError(reason)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case OpenSocket(url=url):
                    self._connection = asyncio.create_task(self._connect(url))
                case SendFrame(frame=frame):
                    self._outbox.append(encode(frame))
                    self._outbox_ready.set()
                case CloseSocket():
                    if self._connection is not None:
                        self._connection.cancel()
                case StartTimer(timer=timer, at=at):
                    self._cancel_timer(timer)
                    loop = asyncio.get_running_loop()
                    self._timers[timer] = loop.call_at(at, self._timer_due, timer)
                case CancelTimer(timer=timer):
                    self._cancel_timer(timer)
                case RenewToken():
                    self._renewal = asyncio.create_task(self._renew())
                case KeepSession(session=session):
                    if self._state is not None:
                        self._state.keep_session(session)
                case _:
                    self._hand_over(action)

    def _hand_over(self, action: Action) -> None:
        match action:
            case TopicSubscribed() | TopicEvent() | TopicGapTold() | TopicEnded():
                self._hand_topic(action)
            case JobAccepted(ref=ref, job_id=job_id) if ref in self._jobs:
                self._jobs[ref].was_accepted(job_id)
            case JobDelivery(ref=ref, deliver=deliver):
                job = self._jobs.get(ref)
                if job is not None:
                    job.delivered(deliver)
                    if deliver.kind in {"result", "error"}:
                        del self._jobs[ref]
                self._apply(self._machine.handled(deliver.id))
            case MessageDelivery(deliver=deliver):
                self._messages.append(deliver)
                self._messages_changed.set()
            case RequestFailed(ref=ref, error=error):
                self._request_failed(ref, error)
            case SessionReset(lost=lost):
                _log.warning("client.session_reset", **asdict(lost))
                if self._on_session_reset is not None:
                    self._on_session_reset(lost)
            case StateChanged():
                self._state_changed(action)
            case Notice(event=event, detail=detail):
                _log.info(event, detail=detail)

    def _request_failed(self, ref: str, error: AckwireError) -> None:
        if ref in self._jobs:
            self._jobs.pop(ref).failed(error)
        elif (subscription := self._subscription_of(ref, done=False)) is not None:
            self._subscriptions.pop(subscription.topic, None)
            subscription.end(error)

    def _hand_topic(self, action: TopicSubscribed | TopicEvent | TopicGapTold | TopicEnded) -> None:
        match action:
            case TopicSubscribed(ref=ref):
                self._subscription_of(ref, done=True)
            case TopicEvent(event=event) if event.topic in self._subscriptions:
                self._subscriptions[event.topic].event(event)
            case TopicGapTold(topic=topic, after=after, before=before):
                if topic in self._subscriptions:
                    self._subscriptions[topic].gap(Gap(topic, after, before))
            case TopicEnded(topic=topic, error=error) if topic in self._subscriptions:
                self._subscriptions.pop(topic).end(error)

    def _subscription_of(self, ref: str, *, done: bool) -> Subscription | None:
        topic = self._subscribe_refs.pop(ref, None)
        subscription = self._subscriptions.get(topic or "")
        if subscription is not None and done and not subscription.subscribed.done():
            subscription.subscribed.set_result(None)
        return subscription

    def _state_changed(self, change: StateChanged) -> None:
        _log.info(
            "client.state_changed", state=change.phase.value, gateway=change.gateway, why=change.why
        )
        if change.phase is Phase.WELCOMED:
            self._welcomed.set()
        if change.phase is Phase.CLOSED:
            self._closed.set()
            self._welcomed.set()
            self._messages_changed.set()
            for timer in list(self._timers):
                self._cancel_timer(timer)
        if self._on_state_change is not None:
            self._on_state_change(change)

    def _cancel_timer(self, timer: Timer) -> None:
        handle = self._timers.pop(timer, None)
        if handle is not None:
            handle.cancel()

    def _timer_due(self, timer: Timer) -> None:
        self._timers.pop(timer, None)
        self._apply(self._machine.timer_due(timer, self._now()))

    async def _renew(self) -> None:
        assert self._refresh is not None  # the machine asks only when it may
        try:
            async with asyncio.timeout(RENEW_TIMEOUT_S):
                token = await self._refresh()
        except Exception as exc:  # the application's callback: any failure is a failed renewal
            self._apply(self._machine.token_renewal_failed(repr(exc), self._now()))
            return
        self._apply(self._machine.token_renewed(token, self._now()))

    async def _connect(self, url: str) -> None:
        """One connection: open, hello, read until it ends; then tell the machine how."""
        code: int | None = None
        reason = ""
        self._outbox.clear()  # frames of an earlier connection: the machine sends anew
        try:
            try:
                ws = await connect(
                    url,
                    subprotocols=[Subprotocol(SUBPROTOCOL)],
                    open_timeout=self._open_timeout_s,
                    max_size=None,  # the gateway bounds what it sends (max_frame_bytes)
                )
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = f"connect to {url} failed: {exc!r}"[:200]
                return
            self._ws = ws
            self._apply(self._machine.socket_opened(self._now()))
            writer = asyncio.create_task(self._write(ws))
            try:
                async for data in ws:
                    self._apply(self._machine.frame_received(data, self._now()))
            except ConnectionClosed:
                pass
            finally:
                await cancel_and_wait(writer)
                with contextlib.suppress(Exception):
                    await ws.close()
            received = ws.protocol.close_rcvd
            if received is not None:
                code, reason = received.code, received.reason
            else:
                reason = "the connection ended without a close frame"
        finally:
            self._ws = None
            if self._connection is asyncio.current_task():
                self._connection = None
            self._apply(self._machine.socket_closed(code, reason, self._now()))

    async def _write(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                while self._outbox:
                    await ws.send(self._outbox.popleft())
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
