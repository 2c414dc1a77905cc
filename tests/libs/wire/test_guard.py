import pytest

from ackwire.wire.codes import CloseCode, ErrorCode
from ackwire.wire.frames import Ack, Hello, Ping
from ackwire.wire.guard import (
    MAX_BAD_FRAMES_IN_A_ROW,
    Accept,
    Close,
    FrameGuard,
    GuardStateError,
    Phase,
    Reject,
)


def open_guard() -> FrameGuard:
    guard = FrameGuard()
    assert guard.receive_hello('{"type": "hello", "token": "t"}') == Hello(token="t")
    guard.hello_accepted()
    return guard


def test_hello_first_is_handed_over() -> None:
    guard = FrameGuard()
    assert guard.receive_hello('{"type": "hello", "token": "t"}') == Hello(token="t")
    assert guard.phase is Phase.AWAITING_HELLO


@pytest.mark.parametrize("first", ['{"type": "ping"}', "{", b"\x00", '{"type": "ack", "seq": 1}'])
def test_anything_but_hello_first_closes_4401(first: str | bytes) -> None:
    guard = FrameGuard()
    verdict = guard.receive_hello(first)
    assert isinstance(verdict, Close)
    assert verdict.code is CloseCode.UNAUTHORIZED
    assert guard.phase is Phase.CLOSED


def test_hello_timeout_closes_4001() -> None:
    assert FrameGuard().hello_timed_out().code is CloseCode.HELLO_TIMEOUT


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
    with pytest.raises(GuardStateError):
        guard.receive('{"type": "ping"}')


def test_a_good_frame_resets_the_bad_frame_count() -> None:
    guard = open_guard()
    for _ in range(3):
        for _ in range(MAX_BAD_FRAMES_IN_A_ROW - 1):
            assert isinstance(guard.receive("nope"), Reject)
        assert guard.receive('{"type": "ping"}') == Accept(Ping())
    assert guard.phase is Phase.OPEN


def test_feeding_frames_out_of_phase_is_a_caller_bug() -> None:
    with pytest.raises(GuardStateError):
        FrameGuard().receive('{"type": "ping"}')
    with pytest.raises(GuardStateError):
        open_guard().receive_hello('{"type": "hello", "token": "t"}')


def test_a_close_reason_fits_a_close_frame() -> None:
    verdict = FrameGuard().receive_hello('{"type": "' + "é" * 500 + '"}')
    assert isinstance(verdict, Close)
    assert len(verdict.reason.encode()) <= 123
