"""ConnectionGuard, without sockets: a connection's phases, its frame rules and its one close."""

from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ackwire.errors import InternalError
from ackwire.wire.codes import CloseCode, ErrorCode
from ackwire.wire.frames import Ack, Hello, Ping
from ackwire.wire.guard import (
    MAX_BAD_FRAMES_IN_A_ROW,
    TRANSITIONS,
    Accept,
    Close,
    ConnectionGuard,
    Ignore,
    Phase,
    Reject,
    TopicAdmission,
    diagram,
)
from ackwire.wire.rate import TokenBucket


def open_guard(sent_before: int = 0) -> ConnectionGuard:
    guard = ConnectionGuard()
    assert guard.receive_hello('{"type": "hello", "token": "t"}') == Hello(token="t")
    assert guard.opened(sent_before=sent_before)
    return guard


def test_hello_first_is_handed_over() -> None:
    guard = ConnectionGuard()
    assert guard.receive_hello('{"type": "hello", "token": "t"}') == Hello(token="t")
    assert guard.phase is Phase.OPENING
    assert guard.may_send


@pytest.mark.parametrize("first", ['{"type": "ping"}', "{", b"\x00", '{"type": "ack", "seq": 1}'])
def test_anything_but_hello_first_closes_4401(first: str | bytes) -> None:
    guard = ConnectionGuard()
    verdict = guard.receive_hello(first)
    assert isinstance(verdict, Close)
    assert verdict.code is CloseCode.UNAUTHORIZED
    assert guard.phase is Phase.CLOSING
    assert not guard.may_send


def test_hello_timeout_closes_4001() -> None:
    close = ConnectionGuard().hello_timed_out()
    assert close is not None
    assert close.code is CloseCode.HELLO_TIMEOUT


def test_frames_after_hello_are_accepted() -> None:
    guard = open_guard()
    assert guard.receive('{"type": "ack", "seq": 3}') == Accept(Ack(seq=3))


def test_a_bad_frame_is_rejected_with_bad_frame_and_the_connection_stays_open() -> None:
    guard = open_guard()
    verdict = guard.receive('{"type": "submit", "ref": "c-1"}')
    assert isinstance(verdict, Reject)
    assert verdict.error.code is ErrorCode.BAD_FRAME
    assert verdict.error.ref == "c-1"
    assert guard.phase is Phase.OPEN


def test_a_second_hello_is_a_bad_frame() -> None:
    guard = open_guard()
    assert isinstance(guard.receive('{"type": "hello", "token": "t"}'), Reject)


def test_ten_bad_frames_in_a_row_close_1008() -> None:
    guard = open_guard()
    for _ in range(MAX_BAD_FRAMES_IN_A_ROW - 1):
        assert isinstance(guard.receive("nope"), Reject)
    verdict = guard.receive("nope")
    assert isinstance(verdict, Close)
    assert verdict.code is CloseCode.POLICY_VIOLATION
    assert guard.receive('{"type": "ping"}') == Ignore()  # closing: not served
    assert guard.receive('{"type": "ack", "seq": 4}') == Accept(Ack(seq=4))  # but acks count


def test_a_good_frame_resets_the_bad_frame_count() -> None:
    guard = open_guard()
    for _ in range(3):
        for _ in range(MAX_BAD_FRAMES_IN_A_ROW - 1):
            assert isinstance(guard.receive("nope"), Reject)
        assert guard.receive('{"type": "ping"}') == Accept(Ping())
    assert guard.phase is Phase.OPEN


def test_feeding_frames_out_of_phase_is_a_caller_bug() -> None:
    with pytest.raises(InternalError):
        ConnectionGuard().receive('{"type": "ping"}')
    with pytest.raises(InternalError):
        open_guard().receive_hello('{"type": "hello", "token": "t"}')


def test_a_close_reason_fits_a_close_frame() -> None:
    verdict = ConnectionGuard().receive_hello('{"type": "' + "é" * 500 + '"}')
    assert isinstance(verdict, Close)
    assert len(verdict.reason.encode()) <= 123


def test_the_first_close_decided_wins() -> None:
    guard = open_guard()
    first = guard.too_slow()
    assert first is not None
    assert first.code is CloseCode.TOO_SLOW
    assert guard.taken_over() is None
    assert guard.bus_failed("later") is None
    assert guard.close_decided == first


def test_a_takeover_while_opening_means_no_welcome() -> None:
    guard = ConnectionGuard()
    guard.receive_hello('{"type": "hello", "token": "t"}')
    assert guard.taken_over() is not None
    assert not guard.opened(sent_before=0)
    assert not guard.may_send


def test_what_the_session_sent_before_is_a_redelivery() -> None:
    guard = open_guard(sent_before=7)
    assert guard.was_sent_before(7)
    assert not guard.was_sent_before(8)


def test_the_architecture_diagram_is_the_transition_table() -> None:
    architecture = Path(__file__).parents[3] / "docs" / "architecture.md"
    assert diagram() in architecture.read_text()


def admission(**overrides: object) -> TopicAdmission:
    settings: dict[str, object] = {"max_topics": 2, "rate": TokenBucket(rate=1, burst=3)}
    settings.update(overrides)
    return TopicAdmission(("chat.*",), **settings)  # type: ignore[arg-type]


def test_a_subscription_the_claim_allows_is_admitted() -> None:
    assert admission().subscribe("chat.a", (), now=0) is None


@pytest.mark.parametrize(
    ("topic", "code"),
    [
        ("news.a", ErrorCode.FORBIDDEN_TOPIC),
        ("chat.*", ErrorCode.BAD_FRAME),
        ("", ErrorCode.BAD_FRAME),
    ],
)
def test_a_subscription_the_claim_does_not_allow_is_refused(topic: str, code: ErrorCode) -> None:
    refusal = admission().subscribe(topic, (), now=0)
    assert refusal is not None
    assert (refusal.code, refusal.topic) == (code, topic)


def test_a_session_holds_at_most_max_topics() -> None:
    rules = admission()
    refusal = rules.subscribe("chat.c", ("chat.a", "chat.b"), now=0)
    assert refusal is not None
    assert refusal.code is ErrorCode.TOO_MANY_TOPICS
    assert rules.subscribe("chat.a", ("chat.a", "chat.b"), now=0) is None  # held: no change


def test_subscription_changes_are_throttled_and_the_budget_refills() -> None:
    rules = admission(max_topics=100)
    assert all(rules.subscribe(f"chat.{n}", (), now=0) is None for n in range(3))
    refusal = rules.unsubscribe("chat.0", ("chat.0",), now=0)
    assert refusal is not None
    assert refusal.code is ErrorCode.RATE_LIMITED
    assert rules.unsubscribe("chat.9", (), now=0) is None  # not held: nothing to write
    assert rules.unsubscribe("chat.0", ("chat.0",), now=1) is None  # a second later


def test_a_refreshed_claim_applies_at_once() -> None:
    rules = admission()
    rules.reclaim(("news.*",))
    assert not rules.allows("chat.a")
    assert rules.allows("news.a")


_DECISIONS = ("hello_timed_out", "taken_over", "ended", "too_slow", "token_expired", "draining")
_FRAMES = ('{"type": "ack", "seq": 1}', '{"type": "ping"}', "nope", '{"type": "bye"}')


class ConnectionMachine(RuleBasedStateMachine):
    """Every input in every phase: no frame may be sent once a close is decided, acks
    read in any phase after `hello` are handed over, and a connection that closes
    gets exactly one close code."""

    def __init__(self) -> None:
        super().__init__()
        self.guard = ConnectionGuard()
        self.closes: list[Close] = []

    def _closed_with(self, close: Close | None) -> None:
        if close is not None:
            self.closes.append(close)

    @rule()
    def hello(self) -> None:
        if self.guard.phase is Phase.AWAITING_HELLO:
            assert isinstance(self.guard.receive_hello('{"type": "hello", "token": "t"}'), Hello)

    @rule(first=st.sampled_from(_FRAMES))
    def not_a_hello_first(self, first: str) -> None:
        if self.guard.phase is Phase.AWAITING_HELLO:
            verdict = self.guard.receive_hello(first)
            assert isinstance(verdict, Close)
            self._closed_with(verdict)

    @rule()
    def opened(self) -> None:
        phase = self.guard.phase
        if phase is not Phase.AWAITING_HELLO:
            assert self.guard.opened(sent_before=0) == (phase is Phase.OPENING)

    @rule(data=st.sampled_from(_FRAMES))
    def frame(self, data: str) -> None:
        phase = self.guard.phase
        if phase not in (Phase.OPEN, Phase.CLOSING):
            return
        verdict = self.guard.receive(data)
        if phase is Phase.CLOSING:
            assert isinstance(verdict, Accept if "ack" in data else Ignore)
        if isinstance(verdict, Close):
            self._closed_with(verdict)

    @rule(decision=st.sampled_from(_DECISIONS))
    def decide(self, decision: str) -> None:
        self._closed_with(getattr(self.guard, decision)())

    @rule()
    def socket_lost(self) -> None:
        self.guard.socket_lost()

    @invariant()
    def one_close_at_most(self) -> None:
        assert len(self.closes) <= 1
        assert self.guard.close_decided == (self.closes[0] if self.closes else None)

    @invariant()
    def nothing_sent_once_closing(self) -> None:
        if self.closes or self.guard.phase is Phase.CLOSED:
            assert not self.guard.may_send

    @invariant()
    def the_phase_is_one_the_table_reaches(self) -> None:
        reachable = {after for _, after in TRANSITIONS.items()} | {Phase.AWAITING_HELLO}
        assert self.guard.phase in reachable


TestConnectionMachine = ConnectionMachine.TestCase
TestConnectionMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
