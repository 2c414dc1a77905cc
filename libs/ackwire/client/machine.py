"""The client's half of the protocol, with no I/O: `ClientMachine`, events in, actions out.

The asyncio layer (`ackwire.client.driver`) opens sockets, moves frames, runs
timers and calls the application; every decision is made here, with the time
passed in. Its phases, and the inputs that move them, are one table,
`phases.TRANSITIONS` (docs/sdk-python.md draws its diagram from it); what it returns
is in `actions.py`. The rules, each from docs/protocol.md:

- **Resume by itself.** A close is judged by `policy.after_close` (the contract's
  close-code table): 1001 reconnects at once to the next gateway, 4401 gets a
  fresh token first, 4403 starts a new session, 4409 stops for good, anything
  else backs off (jittered, exponential) and resumes. Every `hello` after the
  first carries the session's `resume`.
- **Never hidden.** A `welcome` with `resumed: false` after a resume was asked
  for (or a 4403) is reported as `SessionReset`, with the jobs in flight by id;
  their requests fail with `SessionResetError`. Acks of the old session are
  dropped: a `seq` means nothing in another session.
- **Exactly once to the application.** A delivery is handed over once; the
  machine acks it when the application says it has handled it (`handled`). A
  delivery whose `id` was handled before is acked and not handed over again; one
  still in the application's hands is not handed twice. Acks that could not be
  sent wait (bounded) for the resumed `welcome`.
- **Token refresh** ahead of `exp` through `RenewToken`, and `refresh` on the wire.
- **Never stuck.** Submits and subscribes wait (bounded) for a connection and go
  out after the `welcome`; each may carry a deadline, past which it fails with
  `DeadlineExceededError`. A submit unanswered when its connection ended goes out
  again with the same `idempotency_key`: the same key in the same session is the
  same job, run once.
- **Subscriptions survive a resume**: the gateway restores them; after a new
  session the machine subscribes again. An event whose `seq` was handed over
  already (a snapshot sent again) is not handed over twice.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import random as random_module
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass, field

from pydantic import JsonValue

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
from ackwire.client.exceptions import (
    ClientClosedError,
    DeadlineExceededError,
    FrameTooLargeError,
    LostWork,
    ProtocolViolationError,
    RequestQueueFullError,
    RequestRefusedError,
    SessionResetError,
    SessionTakenOverError,
)
from ackwire.client.phases import TRANSITIONS, Input, Phase
from ackwire.client.policy import Backoff, Next, after_close
from ackwire.client.store import SavedSession
from ackwire.errors import AckwireError, InternalError, InvalidTokenError, SessionLostError
from ackwire.wire.codec import BadFrame, encode, parse_server_frame
from ackwire.wire.codes import CloseCode, ErrorCode
from ackwire.wire.frames import (
    Accepted,
    Ack,
    Bye,
    ClientInfo,
    Deliver,
    Error,
    Event,
    Hello,
    Refresh,
    Refreshed,
    ResumeRequest,
    Submit,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
)

#: Requests waiting for a connection or an answer, at most.
MAX_WAITING = 256
#: Acks kept for the resumed `welcome`: as many as the gateway keeps ahead (Delivery).
MAX_PENDING_ACKS = 1024
#: Deliveries handed over and not yet handled, or held for their job's `accepted`.
MAX_IN_HAND = 1024
#: Until the first `welcome` says otherwise (Transport).
DEFAULT_MAX_FRAME_BYTES = 65_536
#: docs/protocol.md, Token lifetime: "refresh ahead of `exp`, about a minute before";
#: a token that lives less than three minutes is refreshed a third of its life ahead.
REFRESH_LEAD_S = 60.0
#: A refresh refused, or a renewal that failed, is tried again this much later.
RENEW_RETRY_S = 5.0
#: 4401 this many times in a row without a `welcome`: fresh tokens do not help.
MAX_AUTH_FAILURES = 3
#: A submit or subscribe answered `unavailable` or `rate_limited` (docs/protocol.md:
#: resubmitting with the same `idempotency_key` is safe; "subscribe again") goes again,
#: up to this many times, after jittered waits doubling from the first, within its
#: deadline.
RETRIES = 5
RETRY_FIRST_S = 0.25


_TERMINAL_KINDS = frozenset({"result", "error"})
_CLOSED_BY_APP = AckwireError("closed by the application")


def token_times(token: str) -> tuple[float | None, float | None]:
    """The JWT's `iat` and `exp`, read without verifying (the gateway verifies)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        raise InvalidTokenError("the token is not a JWT (header.payload.signature)") from None
    if not isinstance(claims, dict):
        raise InvalidTokenError("the token's payload is not a JSON object")
    times = [claims.get(name) for name in ("iat", "exp")]
    iat, exp = (float(t) if isinstance(t, int | float) else None for t in times)
    return iat, exp


@dataclass(slots=True)
class _Job:
    frame: Submit
    deadline: float | None
    sent: bool = False
    """On the wire of the current connection, unanswered."""
    maybe_stored: bool = False
    """Sent on some connection of the session: the gateway may have stored it."""
    job_id: str | None = None
    refused: int = 0
    """Times answered `unavailable` or `rate_limited`."""
    retry_at: float | None = None
    """When it goes again after such an answer."""


@dataclass(slots=True)
class _Topic:
    waiter: str | None
    """The ref whose `subscribed` the application awaits, until answered."""
    deadline: float | None
    asked: str | None = None
    """The ref of the `subscribe` on the wire, until answered."""
    held: bool = False
    last_seq: int = 0
    """The highest event `seq` handed over: anything at or below it came already."""
    refused: int = 0
    """Times its `subscribe` was answered `unavailable` or `rate_limited`."""
    retry_at: float | None = None
    """When its `subscribe` goes again after such an answer."""


@dataclass(slots=True)
class _Session:
    session_id: str
    resume_token: str
    last_seq: int = 0
    pending_acks: set[int] = field(default_factory=set)


class ClientMachine:
    """One client's connections, session, requests and deliveries, from start to close.

    Every input returns the actions to carry out, in order. `now` is any monotonic
    clock in seconds; timers are given on the same clock.
    """

    def __init__(
        self,
        urls: Sequence[str],
        token: str,
        *,
        can_renew: bool,
        seen: SeenIds | None = None,
        session: SavedSession | None = None,
        backoff: Backoff | None = None,
        random: Callable[[], float] = random_module.random,
        nonce: str = "",
        client: ClientInfo | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        """`urls`: the gateways, tried in turn. `can_renew`: the application gives fresh
        tokens (`RenewToken`). `session`: one to resume, kept by an earlier process
        (`KeepSession`). `nonce`: makes this client's idempotency keys unique.
        `wall_clock`: seconds since the epoch (a JWT's `exp` is on that clock)."""
        if not urls:
            raise ValueError("at least one gateway URL is required")
        self._urls = tuple(urls)
        self._url_index = 0
        self._token = token
        self._times = token_times(token)
        self._can_renew = can_renew
        self._seen = seen if seen is not None else SeenIds()
        self._backoff = backoff or Backoff()
        self._random = random
        self._delays: Iterator[float] | None = None
        self._nonce = nonce
        self._client = client
        self._wall_clock = wall_clock
        self._refs = itertools.count(1)
        self._phase = Phase.CONNECTING
        self._closed_reason: AckwireError | None = None
        self._session = None if session is None else _Session(*astuple(session))
        self._gateway: str | None = None
        self._max_frame_bytes = DEFAULT_MAX_FRAME_BYTES
        self._jobs: dict[str, _Job] = {}  # by ref, in submit order
        self._job_refs: dict[str, str] = {}  # job id -> ref
        self._topics: dict[str, _Topic] = {}
        self._topic_asks: dict[str, str] = {}  # ref of a `subscribe` -> topic
        self._leaving: set[str] = set()  # unsubscribed while away: tell the gateway
        self._in_hand: dict[str, tuple[int, str]] = {}  # id -> (seq, session id)
        self._early: dict[str, list[Deliver]] = {}  # job id -> deliveries before `accepted`
        self._refresh_ref: str | None = None
        self._renewing = False
        self._reconnect_after_renewal = False
        self._auth_failures = 0
        self._was_welcomed = False
        self._bye_sent = False
        self._started = False
        self._deadline_at: float | None = None
        self._retry_at: float | None = None

    # -- what it is ----------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def closed_reason(self) -> AckwireError | None:
        """Why the machine stopped, once it has."""
        return self._closed_reason

    @property
    def closed_by_application(self) -> bool:
        """Stopped because the application closed the client (not a failure)."""
        return self._closed_reason is _CLOSED_BY_APP

    @property
    def gateway(self) -> str | None:
        """The gateway holding the connection, while welcomed."""
        return self._gateway if self._phase is Phase.WELCOMED else None

    @property
    def session_id(self) -> str | None:
        return self._session.session_id if self._session else None

    # -- inputs: the I/O layer -----------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Open the first connection."""
        if self._started:
            raise InternalError("start() is called once")
        self._started = True
        return [*self._refresh_timer(now), OpenSocket(self._urls[self._url_index])]

    def socket_opened(self, now: float) -> list[Action]:
        """The WebSocket is open: say `hello` (with the session's `resume`, if any)."""
        if self._phase not in (Phase.CONNECTING, Phase.RESUMING):
            return []
        resume = None
        if self._session is not None:
            resume = ResumeRequest(
                session_id=self._session.session_id,
                resume_token=self._session.resume_token,
                last_seq=self._session.last_seq or None,
            )
        return [SendFrame(Hello(token=self._token, resume=resume, client=self._client))]

    def frame_received(self, data: str | bytes, now: float) -> list[Action]:
        if self._phase is Phase.CLOSED:
            return []
        frame = parse_server_frame(data)
        if isinstance(frame, BadFrame):
            return [Notice("client.frame_unreadable", frame.reason)]
        if isinstance(frame, Welcome):
            return self._finish(self._on_welcome(frame, now), now)
        if self._phase is not Phase.WELCOMED:
            return [Notice("client.frame_before_welcome", frame.type)]
        match frame:
            case Deliver():
                actions = self._on_deliver(frame)
            case Accepted():
                actions = self._on_accepted(frame)
            case Subscribed():
                actions = self._on_subscribed(frame)
            case Event():
                actions = self._on_event(frame)
            case Refreshed():
                actions = self._on_refreshed(frame, now)
            case Error():
                actions = self._on_error(frame, now)
            case _:  # pong, unsubscribed: nothing waits for them
                actions = []
        return self._finish(actions, now)

    def socket_closed(self, code: int | None, reason: str, now: float) -> list[Action]:
        """The socket closed with `code` (`None`: no close frame, a network loss, or a
        connect that failed)."""
        if self._phase is Phase.CLOSED:
            return []
        self._gateway = None
        self._forget_connection()
        if self._bye_sent:
            return self._stop(_CLOSED_BY_APP, now)
        self._url_index = (self._url_index + 1) % len(self._urls)
        was_welcomed, self._was_welcomed = self._was_welcomed, False
        return self._finish(self._after_close(code, reason, was_welcomed, now), now)

    def _after_close(
        self, code: int | None, reason: str, was_welcomed: bool, now: float
    ) -> list[Action]:
        verdict = after_close(code, reason)
        match verdict.next:
            case Next.STOP:
                return self._stop(self._terminal_error(code, verdict.why), now)
            case Next.RESUME_NOW if was_welcomed:
                # At once, but only after a connection that was welcomed: gateways that
                # all drain must not be hammered in a loop.
                return self._open(verdict.why)
            case Next.RENEW_TOKEN:
                self._auth_failures += 1
                if not self._can_renew or self._auth_failures > MAX_AUTH_FAILURES:
                    return self._stop(InvalidTokenError(verdict.why), now)
                self._reconnect_after_renewal = True
                return [*self._move(Input.BACK_OFF, verdict.why), *self._renew()]
            case Next.NEW_SESSION:
                return [*self._reset_session("refused"), *self._back_off(verdict.why, now)]
            case _:
                return self._back_off(verdict.why, now)

    def timer_due(self, timer: Timer, now: float) -> list[Action]:
        if self._phase is Phase.CLOSED:
            return []
        match timer:
            case Timer.RECONNECT if self._phase is Phase.BACKING_OFF:
                return self._finish(self._open("back-off over"), now)
            case Timer.REFRESH:
                return self._renew()
            case Timer.DEADLINE:
                self._deadline_at = None
                return self._finish(self._expire(now), now)
            case Timer.RETRY:
                self._retry_at = None
                return self._finish(self._retry_due(now), now)
            case _:
                return []

    def token_renewed(self, token: str, now: float) -> list[Action]:
        """The application's fresh token: sent as `refresh` now, or in the next `hello`."""
        self._renewing = False
        if self._phase is Phase.CLOSED:
            return []
        try:
            self._times = token_times(token)
        except InvalidTokenError as exc:
            return self.token_renewal_failed(str(exc), now)
        self._token = token
        actions: list[Action] = []
        if self._phase is Phase.WELCOMED:
            self._refresh_ref = self._ref()
            actions.append(SendFrame(Refresh(ref=self._refresh_ref, token=token)))
        else:
            actions += self._refresh_timer(now)
        if self._reconnect_after_renewal:
            self._reconnect_after_renewal = False
            actions += self._back_off("fresh token", now)
        return actions

    def token_renewal_failed(self, why: str, now: float) -> list[Action]:
        """The application could not give a fresh token: try again a little later."""
        self._renewing = False
        if self._phase is Phase.CLOSED:
            return []
        return [
            Notice("client.token_renewal_failed", why),
            StartTimer(Timer.REFRESH, now + RENEW_RETRY_S),
        ]

    # -- inputs: the application -----------------------------------------------------

    def submit(
        self,
        kind: str,
        payload: dict[str, JsonValue],
        now: float,
        *,
        deadline: float | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[str, list[Action]]:
        """A job to run: its ref, answered by `JobAccepted`, `JobDelivery`s until its
        `result` or `error`, or `RequestFailed`. `deadline` bounds the whole job."""
        self._admit()
        ref = self._ref()
        frame = Submit(
            ref=ref,
            kind=kind,
            payload=payload,
            # Always keyed, so that sending it again after a lost connection is safe.
            idempotency_key=idempotency_key or f"{self._nonce}{ref}",
        )
        if len(encode(frame).encode()) > self._max_frame_bytes:
            raise FrameTooLargeError(
                f"the submit is larger than the gateway's {self._max_frame_bytes} bytes"
            )
        job = self._jobs[ref] = _Job(frame, deadline)
        return ref, self._finish(self._send_submit(job), now)

    def subscribe(
        self, topic: str, now: float, *, deadline: float | None = None
    ) -> tuple[str, list[Action]]:
        """Follow `topic`: its ref, answered by `TopicSubscribed` (then `TopicEvent`s,
        snapshot first) or `RequestFailed`. One subscription per topic."""
        if topic in self._topics:
            raise ValueError(f"already subscribed to {topic}")
        Subscribe(ref="c-0", topic=topic)  # bad input is refused here, not on the wire
        self._admit()
        ref = self._ref()
        state = self._topics[topic] = _Topic(waiter=ref, deadline=deadline)
        self._leaving.discard(topic)
        return ref, self._finish(self._send_subscribe(topic, state), now)

    def unsubscribe(self, topic: str, now: float) -> list[Action]:
        state = self._topics.pop(topic, None)
        if state is None or self._phase is Phase.CLOSED:
            return []
        if self._phase is Phase.WELCOMED:
            return self._finish([SendFrame(Unsubscribe(ref=self._ref(), topic=topic))], now)
        self._leaving.add(topic)
        return self._finish([], now)

    def handled(self, delivery_id: str) -> list[Action]:
        """The application is done with this delivery: ack it."""
        held = self._in_hand.pop(delivery_id, None)
        if held is None:
            return []
        self._seen.add(delivery_id)
        seq, session_id = held
        if self._session is None or self._session.session_id != session_id:
            return []  # its session is gone: a seq means nothing in another one
        return self._ack(seq)

    def close(self, now: float, *, end_session: bool = True) -> list[Action]:
        """Stop. `end_session`: end the session for good with `bye` when connected
        (after the acks, which count whatever ends the connection next); else leave it
        resumable for its TTL, for a process started again with the same state."""
        if self._phase is Phase.CLOSED:
            return []
        if end_session and self._phase is Phase.WELCOMED and not self._bye_sent:
            self._bye_sent = True
            return [SendFrame(Bye())]
        return [CloseSocket(), *self._stop(_CLOSED_BY_APP, now)]

    # -- frames ------------------------------------------------------------------------

    def _on_welcome(self, welcome: Welcome, now: float) -> list[Action]:
        if self._phase not in (Phase.CONNECTING, Phase.RESUMING):
            return [Notice("client.frame_unexpected", "a second welcome")]
        actions: list[Action] = []
        old = self._session
        if old is not None and (not welcome.resumed or welcome.session_id != old.session_id):
            actions += self._reset_session(welcome.reason or "unknown")
        if self._session is None:
            self._session = _Session(welcome.session_id, welcome.resume_token)
            actions.append(KeepSession(SavedSession(welcome.session_id, welcome.resume_token)))
        self._gateway = welcome.gateway
        self._max_frame_bytes = welcome.max_frame_bytes
        self._delays = None
        self._auth_failures = 0
        self._was_welcomed = True
        actions += self._move(Input.WELCOME, "resumed" if welcome.resumed else "new session")
        pending, self._session.pending_acks = sorted(self._session.pending_acks), set()
        actions += [SendFrame(Ack(seq=seq)) for seq in pending]
        if welcome.resumed:
            actions += [SendFrame(Unsubscribe(ref=self._ref(), topic=t)) for t in self._leaving]
        self._leaving.clear()
        for topic, state in self._topics.items():
            if not state.held and state.asked is None:
                actions += self._send_subscribe(topic, state)
        for job in self._jobs.values():
            if not job.sent:
                actions += self._send_submit(job)
        if self._can_renew:
            actions += self._refresh_timer(now)
        return actions

    def _on_deliver(self, deliver: Deliver) -> list[Action]:
        assert self._session is not None  # welcomed
        self._session.last_seq = max(self._session.last_seq, deliver.seq)
        if deliver.id in self._seen:
            return self._ack(deliver.seq)  # handled before: acked, not handed again
        if deliver.id in self._in_hand or self._holding() >= MAX_IN_HAND:
            return []  # its ack comes once handled / it comes again after ack_wait
        if deliver.kind == "message":
            self._in_hand[deliver.id] = (deliver.seq, self._session.session_id)
            return [MessageDelivery(deliver)]
        ref = self._job_refs.get(deliver.job_id or "")
        if ref is not None:
            self._in_hand[deliver.id] = (deliver.seq, self._session.session_id)
            if deliver.kind in _TERMINAL_KINDS:
                self._end_job(ref)
            return [JobDelivery(ref, deliver)]
        if deliver.job_id and any(j.sent and j.job_id is None for j in self._jobs.values()):
            # A fast job's deliveries may come before its `accepted` (Jobs).
            self._early.setdefault(deliver.job_id, []).append(deliver)
            return []
        self._seen.add(deliver.id)
        return [Notice("client.delivery_unclaimed", deliver.id), *self._ack(deliver.seq)]

    def _on_accepted(self, accepted: Accepted) -> list[Action]:
        job = self._jobs.get(accepted.ref)
        if job is None or job.job_id is not None:
            return []  # its caller gave up (deadline)
        job.job_id = accepted.job_id
        self._job_refs[accepted.job_id] = accepted.ref
        actions: list[Action] = [JobAccepted(accepted.ref, accepted.job_id)]
        for early in self._early.pop(accepted.job_id, []):
            actions += self._on_deliver(early)
        return actions

    def _on_subscribed(self, subscribed: Subscribed) -> list[Action]:
        topic = self._topic_asks.pop(subscribed.ref, None)
        if topic is None:
            return []
        state = self._topics.get(topic)
        if state is None:
            # Abandoned while asked (a deadline, an unsubscribe): let the gateway know.
            return [SendFrame(Unsubscribe(ref=self._ref(), topic=topic))]
        if state.asked != subscribed.ref:
            return []  # an earlier ask of a topic subscribed to again: the later one counts
        state.asked, state.held, state.refused = None, True, 0
        waiter, state.waiter, state.deadline = state.waiter, None, None
        return [TopicSubscribed(waiter, topic)] if waiter is not None else []

    def _on_event(self, event: Event) -> list[Action]:
        state = self._topics.get(event.topic)
        if state is None or event.seq <= state.last_seq:
            return []  # unsubscribed, or handed over already (a snapshot sent again)
        state.last_seq = event.seq
        return [TopicEvent(event)]

    def _on_refreshed(self, refreshed: Refreshed, now: float) -> list[Action]:
        if refreshed.ref != self._refresh_ref:
            return []
        self._refresh_ref = None
        return self._refresh_timer(now)

    def _on_error(self, error: Error, now: float) -> list[Action]:
        refused = RequestRefusedError(error.code, error.message, topic=error.topic)
        if error.ref is not None and error.ref == self._refresh_ref:
            self._refresh_ref = None
            return [
                Notice("client.refresh_refused", error.message),
                StartTimer(Timer.REFRESH, now + RENEW_RETRY_S),
            ]
        if error.ref is not None and error.ref in self._jobs:
            return self._submit_refused(error.ref, refused, now)
        if error.ref is not None and error.ref in self._topic_asks:
            return self._subscribe_refused(error.ref, refused, now)
        if error.topic is not None and error.topic in self._topics:
            if error.code is ErrorCode.TOPIC_GAP and error.gap is not None:
                return [TopicGapTold(error.topic, error.gap.after, error.gap.before)]
            if error.ref is None:  # dropped by the gateway (forbidden_topic)
                return self._topic_refused(error.topic, self._topics.pop(error.topic), refused)
        return [Notice("client.error_received", f"{error.code.value}: {error.message}")]

    @staticmethod
    def _topic_refused(
        topic: str, state: _Topic | None, refused: RequestRefusedError
    ) -> list[Action]:
        if state is None:
            return []
        if state.waiter is not None:
            return [RequestFailed(state.waiter, refused)]
        return [TopicEnded(topic, refused)]

    # -- inside ----------------------------------------------------------------------

    def _ref(self) -> str:
        return f"c-{next(self._refs)}"

    def _admit(self) -> None:
        if self._closed_reason is not None:
            raise ClientClosedError(self._closed_reason)
        if self._bye_sent:
            raise ClientClosedError(_CLOSED_BY_APP)
        waiting = sum(j.job_id is None for j in self._jobs.values())
        waiting += sum(not t.held for t in self._topics.values())
        if waiting >= MAX_WAITING:
            raise RequestQueueFullError(f"{waiting} requests wait for an answer already")

    def _holding(self) -> int:
        return len(self._in_hand) + sum(len(held) for held in self._early.values())

    def _send_submit(self, job: _Job) -> list[Action]:
        if self._phase is not Phase.WELCOMED:
            return []
        job.sent = job.maybe_stored = True
        job.retry_at = None
        return [SendFrame(job.frame)]

    def _submit_refused(self, ref: str, refused: RequestRefusedError, now: float) -> list[Action]:
        job = self._jobs[ref]
        retry_at = self._again_at(job.refused, job.deadline, refused, now)
        if retry_at is None:
            self._end_job(ref)
            return [RequestFailed(ref, refused)]
        job.sent, job.refused, job.retry_at = False, job.refused + 1, retry_at
        return [Notice("client.submit_retried", f"{ref}: {refused}")]

    def _subscribe_refused(
        self, ref: str, refused: RequestRefusedError, now: float
    ) -> list[Action]:
        topic = self._topic_asks.pop(ref)
        state = self._topics.get(topic)
        if state is not None and state.asked == ref:
            retry_at = self._again_at(state.refused, state.deadline, refused, now)
            if retry_at is not None:
                state.asked, state.refused, state.retry_at = None, state.refused + 1, retry_at
                return [Notice("client.subscribe_retried", f"{topic}: {refused}")]
        return self._topic_refused(topic, self._topics.pop(topic, None), refused)

    def _again_at(
        self, times: int, deadline: float | None, refused: RequestRefusedError, now: float
    ) -> float | None:
        """When a request refused `times` times before goes again, or `None`: it fails
        with the refusal (docs/protocol.md: the same submit, or subscribe, again is safe)."""
        if not refused.retryable or times >= RETRIES:
            return None
        at = now + RETRY_FIRST_S * 2**times * (0.5 + self._random() / 2)
        return at if deadline is None or at < deadline else None

    def _retry_due(self, now: float) -> list[Action]:
        """Refused requests whose wait is over go again (not connected: after the
        `welcome`, with everything else unsent)."""
        actions: list[Action] = []
        for job in self._jobs.values():
            if job.retry_at is not None and job.retry_at <= now:
                job.retry_at = None
                actions += self._send_submit(job)
        for topic, state in self._topics.items():
            if state.retry_at is not None and state.retry_at <= now:
                state.retry_at = None
                actions += self._send_subscribe(topic, state)
        return actions

    def _send_subscribe(self, topic: str, state: _Topic) -> list[Action]:
        if self._phase is not Phase.WELCOMED:
            return []
        state.retry_at = None
        state.asked = self._ref()
        self._topic_asks[state.asked] = topic
        return [SendFrame(Subscribe(ref=state.asked, topic=topic))]

    def _ack(self, seq: int) -> list[Action]:
        if self._phase is Phase.WELCOMED:
            return [SendFrame(Ack(seq=seq))]
        assert self._session is not None  # a delivery came on one of its connections
        pending = self._session.pending_acks
        pending.add(seq)
        if len(pending) > MAX_PENDING_ACKS:
            pending.remove(min(pending))  # it comes again, and is acked again (deduped)
        return []

    def _end_job(self, ref: str) -> None:
        job = self._jobs.pop(ref)
        if job.job_id is not None:
            self._job_refs.pop(job.job_id, None)

    def _forget_connection(self) -> None:
        """What a connection's end undoes: answers it owed are asked for again."""
        for job in self._jobs.values():
            if job.job_id is None:
                job.sent = False  # sent again, with its idempotency key
        for state in self._topics.values():
            if state.asked is not None:
                state.asked = None
        self._topic_asks.clear()
        self._early.clear()  # not acked: they come again
        self._refresh_ref = None

    def _reset_session(self, reason: str) -> list[Action]:
        """The session is gone: report what went with it, fail what waited on it."""
        old = self._session
        self._session = None
        if old is None:
            return []
        lost_jobs = {ref: job for ref, job in self._jobs.items() if job.maybe_stored}
        lost = LostWork(
            reason=reason,
            session_id=old.session_id,
            job_ids=tuple(j.job_id for j in lost_jobs.values() if j.job_id),
            submit_refs=tuple(ref for ref, j in lost_jobs.items() if j.job_id is None),
        )
        error = SessionResetError(lost)
        actions: list[Action] = [SessionReset(lost)]
        for ref in lost_jobs:
            self._end_job(ref)
            actions.append(RequestFailed(ref, error))
        for state in self._topics.values():
            state.held = False  # a new session has no subscriptions: subscribe again
        self._leaving.clear()
        return actions

    def _open(self, why: str) -> list[Action]:
        step = Input.RESUME if self._session is not None else Input.CONNECT
        return [*self._move(step, why), OpenSocket(self._urls[self._url_index])]

    def _back_off(self, why: str, now: float) -> list[Action]:
        if self._delays is None:
            self._delays = self._backoff.delays(self._random)
        return [
            *self._move(Input.BACK_OFF, why),
            StartTimer(Timer.RECONNECT, now + next(self._delays)),
        ]

    def _renew(self) -> list[Action]:
        if not self._can_renew or self._renewing:
            return []
        self._renewing = True
        return [RenewToken()]

    def _refresh_timer(self, now: float) -> list[Action]:
        """Renew ahead of the token's `exp`, on the machine's clock."""
        iat, exp = self._times
        if not self._can_renew or exp is None or self._wall_clock is None:
            return []
        wall = self._wall_clock()
        lifetime = exp - (iat if iat is not None else wall)
        lead = min(REFRESH_LEAD_S, max(lifetime, 0.0) / 3)
        return [StartTimer(Timer.REFRESH, now + max(exp - lead - wall, 0.0))]

    def _expire(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for ref, job in list(self._jobs.items()):
            if job.deadline is not None and job.deadline <= now:
                self._end_job(ref)
                actions.append(RequestFailed(ref, DeadlineExceededError(f"{ref}: deadline passed")))
        for topic, state in list(self._topics.items()):
            if state.waiter and state.deadline is not None and state.deadline <= now:
                del self._topics[topic]  # an answer still on its way is undone on arrival
                error = DeadlineExceededError(f"subscribe to {topic}: deadline passed")
                actions.append(RequestFailed(state.waiter, error))
        return actions

    def _finish(self, actions: list[Action], now: float) -> list[Action]:
        """The deadline timer follows the earliest deadline of what still waits, the
        retry timer the earliest refused submit's retry."""
        if self._phase is Phase.CLOSED:
            return actions
        deadlines = [j.deadline for j in self._jobs.values() if j.deadline is not None]
        deadlines += [t.deadline for t in self._topics.values() if t.deadline is not None]
        earliest = min(deadlines, default=None)
        if earliest != self._deadline_at:
            self._deadline_at = earliest
            actions.append(_timer_at(Timer.DEADLINE, earliest))
        retries = [j.retry_at for j in self._jobs.values() if j.retry_at is not None]
        retries += [t.retry_at for t in self._topics.values() if t.retry_at is not None]
        retry_at = min(retries, default=None)
        if retry_at != self._retry_at:
            self._retry_at = retry_at
            actions.append(_timer_at(Timer.RETRY, retry_at))
        return actions

    def _terminal_error(self, code: int | None, why: str) -> AckwireError:
        if code == CloseCode.SESSION_TAKEN_OVER:
            return SessionTakenOverError(why)
        if code in (CloseCode.POLICY_VIOLATION, CloseCode.MESSAGE_TOO_BIG):
            return ProtocolViolationError(why)
        return SessionLostError(f"the gateway ended the session: {why}")

    def _stop(self, reason: AckwireError, now: float) -> list[Action]:
        """Terminal: every request still waiting fails, every subscription ends."""
        self._closed_reason = reason.reason if isinstance(reason, ClientClosedError) else reason
        error = reason if isinstance(reason, ClientClosedError) else ClientClosedError(reason)
        actions = self._move(Input.STOP, str(self._closed_reason))
        if self._bye_sent or isinstance(reason, SessionLostError):
            actions.append(KeepSession(None))  # ended, or held by another connection now
        actions += [RequestFailed(ref, error) for ref in self._jobs]
        actions += [
            RequestFailed(t.waiter, error) if t.waiter else TopicEnded(topic, error)
            for topic, t in self._topics.items()
        ]
        self._jobs.clear()
        self._job_refs.clear()
        self._topics.clear()
        self._topic_asks.clear()
        actions += [CancelTimer(timer) for timer in Timer]
        return actions

    def _move(self, step: Input, why: str) -> list[Action]:
        try:
            after = TRANSITIONS[self._phase, step]
        except KeyError:
            raise InternalError(f"{step.value} in phase {self._phase.value}") from None
        changed = after is not self._phase
        self._phase = after
        return [StateChanged(after, self._gateway, why)] if changed else []


def _timer_at(timer: Timer, at: float | None) -> StartTimer | CancelTimer:
    return CancelTimer(timer) if at is None else StartTimer(timer, at)
