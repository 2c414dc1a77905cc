"""ClientMachine against a model gateway, under any history Hypothesis finds.

The model keeps one session's owed messages as the contract says a gateway does
(docs/protocol.md, Delivery): sent in `seq` order, sent again after `ack_wait`
and after every resume, removed by an ack. Between them: disconnects with every
close code (4409 included), welcomes lost on the way, sessions that expire, and
token refreshes answered or refused. Checked throughout: the application is
handed every delivery at most once, in `seq` order within a session, and acks go
out only on a welcomed connection. Checked at the end, once the network heals:
the client is connected (and everything stored reached the application, or was
reported lost with its session) or it is closed with a reason.
"""

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ackwire.client.actions import (
    Action,
    CancelTimer,
    KeepSession,
    MessageDelivery,
    Notice,
    OpenSocket,
    RenewToken,
    SendFrame,
    SessionReset,
    StartTimer,
    StateChanged,
    Timer,
)
from ackwire.client.machine import ClientMachine
from ackwire.client.phases import Phase
from ackwire.wire.codec import encode
from ackwire.wire.codes import ErrorCode
from ackwire.wire.frames import Ack, Deliver, Error, Hello, Refresh, Refreshed, Welcome
from libs.client.test_machine import WALL, jwt

CLOSE_CODES = [1001, 1011, 4001, 4401, 4403, 4409, 4429, None]


@dataclass
class Owed:
    seq: int
    id: str


@dataclass
class ModelGateway:
    """One session's store and the one connection holding it, if any."""

    session: str = ""
    sessions_opened: int = 0
    owed: list[Owed] = field(default_factory=list)
    socket: str | None = None  # None, "opening" or "welcomed"
    refresh_ref: str | None = None


class ClientHistories(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.gateway = ModelGateway()
        self.timers: dict[Timer, float] = {}
        self.renewal_asked = False
        self.machine = ClientMachine(
            ["ws://a", "ws://b"],
            jwt(WALL + 30, iat=WALL),
            can_renew=True,
            random=lambda: 0.5,
            wall_clock=lambda: WALL + self.now,
        )
        self.next_seq = 1
        self.handed: list[tuple[str, int, str]] = []  # (session, seq, id), in order
        self.in_hand: list[str] = []
        self.stored: set[str] = set()
        self.lost: set[str] = set()  # stored in a session that ended without resuming
        self.reported_resets = 0
        self.unread: list[Ack | Refresh] = []  # sent by the client, not yet read
        self.run(self.machine.start(self.now))

    # -- the machine's actions, carried out by the model -----------------------------

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case OpenSocket():
                    assert self.gateway.socket is None, "a second socket at once"
                    self.gateway.socket = "opening"
                case SendFrame(frame=Ack() | Refresh() as frame):
                    assert self.gateway.socket == "welcomed", f"{frame} on no connection"
                    self.unread.append(frame)
                case SendFrame(frame=Hello()):
                    raise AssertionError("hello is the answer to socket_opened only")
                case StartTimer(timer=timer, at=at):
                    assert at >= self.now
                    self.timers[timer] = at
                case CancelTimer(timer=timer):
                    self.timers.pop(timer, None)
                case RenewToken():
                    assert not self.renewal_asked, "a second renewal while one is asked"
                    self.renewal_asked = True
                case MessageDelivery(deliver=d):
                    assert d.id not in {i for _, _, i in self.handed}, f"{d.id} handed twice"
                    self.handed.append((self.gateway.session, d.seq, d.id))
                    self.in_hand.append(d.id)
                case SessionReset():
                    self.reported_resets += 1
                case KeepSession(session=kept):
                    # What a restarted process would resume: the session being served.
                    assert kept is None or kept.session_id == self.gateway.session, kept
                case StateChanged() | Notice():
                    pass
                case _:
                    raise AssertionError(f"unexpected {action}")

    def deliver(self, owed: Owed, *, redelivered: bool) -> None:
        frame = Deliver(seq=owed.seq, id=owed.id, kind="message", data={}, redelivered=redelivered)
        self.run(self.machine.frame_received(encode(frame), self.now))

    # -- the world ------------------------------------------------------------------

    @precondition(lambda self: self.gateway.socket == "opening")
    @rule(outcome=st.sampled_from(["welcome", "welcome", "lost", "expired"]))
    def gateway_answers_the_hello(self, outcome: str) -> None:
        actions = self.machine.socket_opened(self.now)
        [hello] = [a.frame for a in actions if isinstance(a, SendFrame)]
        assert isinstance(hello, Hello)
        if outcome == "lost":  # the welcome never arrives: the socket dies first
            self.gateway.socket = None
            self.run(self.machine.socket_closed(None, "lost", self.now))
            return
        resumed = hello.resume is not None and hello.resume.session_id == self.gateway.session
        if resumed and outcome == "expired":
            resumed = False
        if not resumed:
            self.end_session()
            self.gateway.sessions_opened += 1
            self.gateway.session = f"s-{self.gateway.sessions_opened}"
        self.gateway.socket = "welcomed"
        welcome = Welcome(
            session_id=self.gateway.session,
            resume_token="rt",
            resumed=resumed,
            reason=None if resumed else ("new" if hello.resume is None else "expired"),
            gateway="gw",
            heartbeat_s=15,
            max_frame_bytes=65536,
            window=64,
        )
        self.run(self.machine.frame_received(encode(welcome), self.now))
        for owed in list(self.gateway.owed):  # everything owed again, oldest first
            if self.gateway.socket == "welcomed" and owed in self.gateway.owed:
                self.deliver(owed, redelivered=True)

    def end_session(self) -> None:
        if self.gateway.session and self.gateway.owed:
            self.lost |= {m.id for m in self.gateway.owed}
        self.gateway.owed = []

    @rule()
    def a_message_is_stored(self) -> None:
        owed = Owed(self.next_seq, f"m-{self.next_seq}")
        self.next_seq += 1
        if not self.gateway.session:
            return  # no session yet: nobody to send it to
        self.gateway.owed.append(owed)
        self.stored.add(owed.id)
        if self.gateway.socket == "welcomed":
            self.deliver(owed, redelivered=False)

    @precondition(lambda self: self.unread)
    @rule()
    def gateway_reads_what_the_client_sent(self) -> None:
        for frame in self.unread:
            if isinstance(frame, Ack):
                self.gateway.owed = [m for m in self.gateway.owed if m.seq != frame.seq]
            else:
                self.gateway.refresh_ref = frame.ref
        self.unread.clear()

    @precondition(lambda self: self.gateway.socket == "welcomed" and self.gateway.owed)
    @rule(data=st.data())
    def ack_wait_passes(self, data: st.DataObject) -> None:
        self.deliver(data.draw(st.sampled_from(self.gateway.owed)), redelivered=True)

    @precondition(lambda self: self.in_hand)
    @rule(data=st.data())
    def the_application_handles_one(self, data: st.DataObject) -> None:
        delivery_id = data.draw(st.sampled_from(self.in_hand))
        self.in_hand.remove(delivery_id)
        self.run(self.machine.handled(delivery_id))

    @precondition(lambda self: self.gateway.socket is not None)
    @rule(code=st.sampled_from(CLOSE_CODES))
    def the_connection_ends(self, code: int | None) -> None:
        if code == 4403:
            self.end_session()  # refused: what it was owed never comes to this client
            self.gateway.session = ""
        self.gateway.socket = None
        self.gateway.refresh_ref = None
        self.unread.clear()  # lost with the connection, unread
        self.run(self.machine.socket_closed(code, "", self.now))

    @precondition(lambda self: self.timers)
    @rule(data=st.data())
    def a_timer_is_due(self, data: st.DataObject) -> None:
        timer = data.draw(st.sampled_from(sorted(self.timers, key=lambda t: t.value)))
        self.now = max(self.now, self.timers.pop(timer))
        self.run(self.machine.timer_due(timer, self.now))

    @precondition(lambda self: self.renewal_asked)
    @rule(works=st.booleans())
    def the_application_renews_the_token(self, works: bool) -> None:
        self.renewal_asked = False
        if works:
            self.run(
                self.machine.token_renewed(jwt(WALL + self.now + 30, WALL + self.now), self.now)
            )
        else:
            self.run(self.machine.token_renewal_failed("the identity provider is down", self.now))

    @precondition(lambda self: self.gateway.refresh_ref is not None)
    @rule(accepted=st.booleans())
    def gateway_answers_the_refresh(self, accepted: bool) -> None:
        ref, self.gateway.refresh_ref = self.gateway.refresh_ref, None
        assert ref is not None
        answer = (
            Refreshed(ref=ref, exp=int(WALL + self.now + 30))
            if accepted
            else Error(ref=ref, code=ErrorCode.BAD_TOKEN, message="token expired")
        )
        self.run(self.machine.frame_received(encode(answer), self.now))

    # -- what must hold ----------------------------------------------------------------

    @invariant()
    def handed_in_seq_order_within_each_session(self) -> None:
        for (session, seq, _), (later_session, later_seq, _) in zip(
            self.handed, self.handed[1:], strict=False
        ):
            assert session != later_session or seq < later_seq, self.handed

    @invariant()
    def closed_only_with_a_reason(self) -> None:
        closed = self.machine.phase is Phase.CLOSED
        assert closed == (self.machine.closed_reason is not None)
        assert not closed or not self.timers or set(self.timers) <= {Timer.DEADLINE}

    @invariant()
    def a_lost_session_is_reported(self) -> None:
        assert not self.lost - {i for _, _, i in self.handed} or self.reported_resets > 0

    def teardown(self) -> None:
        """The network heals: every wait ends, every welcome arrives, the app handles all."""
        for _ in range(1000):
            settled = not self.in_hand and not self.unread
            if self.machine.phase in (Phase.CLOSED, Phase.WELCOMED) and settled:
                break
            if self.unread:
                self.gateway_reads_what_the_client_sent()
            elif self.gateway.socket == "opening":
                self.gateway_answers_the_hello("welcome")
            elif self.renewal_asked:
                self.the_application_renews_the_token(works=True)
            elif self.in_hand:
                self.the_application_handles_one_now()
            elif self.timers:
                timer = min(self.timers, key=self.timers.__getitem__)
                self.now = max(self.now, self.timers.pop(timer))
                self.run(self.machine.timer_due(timer, self.now))
            else:
                raise AssertionError(f"stuck in {self.machine.phase}: nothing will move it")
        if self.machine.phase is Phase.CLOSED:
            return  # a reported terminal state (4409, or 4401 again and again)
        assert self.machine.phase is Phase.WELCOMED
        assert not self.gateway.owed, "every message handed over was acked, and removed"
        # Every message stored for the client reached the application, or was lost with
        # a session whose loss was reported (the invariant above).
        assert self.stored == {i for _, _, i in self.handed} | self.lost

    def the_application_handles_one_now(self) -> None:
        self.run(self.machine.handled(self.in_hand.pop(0)))


ClientHistories.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_client_histories = ClientHistories.TestCase
