"""ClientMachine, without sockets: reconnects, resumes, acks, dedupe, refresh, deadlines."""

import base64
import json
from pathlib import Path

import pytest

from ackwire.client.actions import (
    Action,
    JobAccepted,
    JobDelivery,
    KeepSession,
    MessageDelivery,
    OpenSocket,
    RenewToken,
    RequestFailed,
    SendFrame,
    SessionReset,
    StartTimer,
    Timer,
    TopicEvent,
    TopicSubscribed,
)
from ackwire.client.dedupe import SeenIds
from ackwire.client.exceptions import (
    ClientClosedError,
    DeadlineExceededError,
    FrameTooLargeError,
    ProtocolViolationError,
    RequestRefusedError,
    SessionResetError,
    SessionTakenOverError,
)
from ackwire.client.machine import (
    RETRIES,
    RETRY_FIRST_S,
    ClientMachine,
    token_times,
)
from ackwire.client.phases import Phase, diagram
from ackwire.client.store import ClientState, SavedSession
from ackwire.errors import InvalidTokenError
from ackwire.wire.codec import encode
from ackwire.wire.codes import ErrorCode
from ackwire.wire.frames import (
    Accepted,
    Ack,
    Bye,
    ClientFrame,
    Deliver,
    Error,
    Event,
    Frame,
    Hello,
    Refresh,
    Refreshed,
    Submit,
    Subscribe,
    Subscribed,
    Welcome,
)

WALL = 1_000_000.0
URLS = ("ws://a", "ws://b")


def jwt(exp: float, iat: float | None = None) -> str:
    claims: dict[str, float | str] = {"sub": "alice", "exp": exp}
    if iat is not None:
        claims["iat"] = iat
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.signature"


def machine(
    *, can_renew: bool = False, exp: float = WALL + 3600, **kwargs: object
) -> ClientMachine:
    return ClientMachine(
        URLS,
        jwt(exp, iat=WALL),
        can_renew=can_renew,
        random=lambda: 0.5,
        nonce="n-",
        wall_clock=lambda: WALL,
        **kwargs,  # type: ignore[arg-type]
    )


def welcome(session: str = "s-1", *, resumed: bool = False, reason: str | None = "new") -> str:
    return encode(
        Welcome(
            session_id=session,
            resume_token="rt",
            resumed=resumed,
            reason=None if resumed else reason,  # type: ignore[arg-type]
            gateway="gw-1",
            heartbeat_s=15,
            max_frame_bytes=4096,
            window=64,
        )
    )


def frames(actions: list[Action]) -> list[ClientFrame]:
    return [a.frame for a in actions if isinstance(a, SendFrame)]


def text(frame: Frame) -> str:
    return encode(frame)


def deliver(seq: int, kind: str = "message", job_id: str | None = None, **extra: object) -> str:
    did = extra.pop("id", f"{job_id}:{kind}" if job_id else f"m-{seq}")
    return text(Deliver(seq=seq, id=did, kind=kind, job_id=job_id, data={}, **extra))  # type: ignore[arg-type]


def welcomed(m: ClientMachine, session: str = "s-1") -> None:
    m.start(0)
    m.socket_opened(0)
    m.frame_received(welcome(session), 0)
    assert m.phase is Phase.WELCOMED


def resume(m: ClientMachine, now: float, answer: str) -> list[Action]:
    """From backing off: the reconnect timer, the socket, the hello, the answer."""
    actions = m.timer_due(Timer.RECONNECT, now)
    assert any(isinstance(a, OpenSocket) for a in actions), actions
    [hello] = frames(m.socket_opened(now))
    assert isinstance(hello, Hello)
    assert hello.resume is not None
    assert hello.resume.session_id == "s-1"
    return m.frame_received(answer, now)


def test_the_first_hello_asks_for_no_resume_and_the_welcome_opens() -> None:
    m = machine()
    assert m.start(0) == [OpenSocket("ws://a")]
    [hello] = frames(m.socket_opened(0))
    assert isinstance(hello, Hello)
    assert hello.resume is None
    m.frame_received(welcome(), 0)
    assert (m.phase, m.gateway, m.session_id) == (Phase.WELCOMED, "gw-1", "s-1")


def test_a_drain_reconnects_at_once_to_the_next_gateway_and_resumes() -> None:
    m = machine()
    welcomed(m)
    m.frame_received(deliver(7), 0)
    actions = m.socket_closed(1001, "gateway draining", 1)
    assert OpenSocket("ws://b") in actions
    assert m.phase is Phase.RESUMING
    [hello] = frames(m.socket_opened(1))
    assert isinstance(hello, Hello)
    assert hello.resume is not None
    assert (hello.resume.session_id, hello.resume.resume_token, hello.resume.last_seq) == (
        "s-1",
        "rt",
        7,
    )


def test_a_drain_right_after_a_failed_attempt_backs_off() -> None:
    m = machine()
    welcomed(m)
    m.socket_closed(1001, "draining", 1)
    actions = m.socket_closed(1001, "draining", 1)  # the next gateway drains too
    assert m.phase is Phase.BACKING_OFF
    assert StartTimer(Timer.RECONNECT, 1 + 0.5 * 0.5) in actions


@pytest.mark.parametrize("code", [1011, 4429, 4001, None, 4999])
def test_other_closes_back_off_exponentially_with_jitter(code: int | None) -> None:
    m = machine()
    welcomed(m)
    waits = []
    for attempt in range(4):
        actions = m.socket_closed(code, "x", 10) if attempt == 0 else m.socket_closed(None, "", 10)
        [timer] = [a for a in actions if isinstance(a, StartTimer) and a.timer is Timer.RECONNECT]
        waits.append(timer.at - 10)
        assert m.phase is Phase.BACKING_OFF
        assert m.timer_due(Timer.RECONNECT, 10)[-1] == OpenSocket(URLS[(attempt + 1) % 2])
    assert waits == [0.25, 0.5, 1.0, 2.0]  # half of 0.5, 1, 2, 4 (random() is 0.5)
    m.socket_opened(10)
    m.frame_received(welcome(resumed=True), 10)
    actions = m.socket_closed(1011, "x", 20)  # a welcome starts the back-off over
    assert StartTimer(Timer.RECONNECT, 20.25) in actions


def test_a_takeover_stops_for_good_and_fails_what_waits() -> None:
    m = machine()
    welcomed(m)
    ref, _ = m.submit("echo", {}, 0)
    actions = m.socket_closed(4409, "session taken over", 1)
    assert m.phase is Phase.CLOSED
    assert isinstance(m.closed_reason, SessionTakenOverError)
    [failed] = [a for a in actions if isinstance(a, RequestFailed)]
    assert failed.ref == ref
    assert isinstance(failed.error, ClientClosedError)
    assert failed.error.reason is m.closed_reason
    assert m.timer_due(Timer.RECONNECT, 5) == []
    with pytest.raises(ClientClosedError):
        m.submit("echo", {}, 2)


@pytest.mark.parametrize("code", [1008, 1009])
def test_a_protocol_violation_stops(code: int) -> None:
    m = machine()
    welcomed(m)
    m.socket_closed(code, "bad", 1)
    assert isinstance(m.closed_reason, ProtocolViolationError)


def test_4401_without_a_way_to_a_fresh_token_stops() -> None:
    m = machine()
    welcomed(m)
    m.socket_closed(4401, "token expired", 1)
    assert isinstance(m.closed_reason, InvalidTokenError)


def test_4401_asks_for_a_fresh_token_then_resumes_with_it() -> None:
    m = machine(can_renew=True)
    welcomed(m)
    actions = m.socket_closed(4401, "token expired", 1)
    assert RenewToken() in actions
    assert m.phase is Phase.BACKING_OFF
    assert not [a for a in actions if isinstance(a, StartTimer) and a.timer is Timer.RECONNECT]
    fresh = jwt(WALL + 7200, iat=WALL)
    actions = m.token_renewed(fresh, 2)
    assert StartTimer(Timer.RECONNECT, 2.25) in actions
    m.timer_due(Timer.RECONNECT, 3)
    [hello] = frames(m.socket_opened(3))
    assert isinstance(hello, Hello)
    assert hello.token == fresh
    assert hello.resume is not None


def test_4401_again_and_again_stops() -> None:
    m = machine(can_renew=True)
    welcomed(m)
    for _ in range(3):
        m.socket_closed(4401, "invalid token", 1)
        m.token_renewed(jwt(WALL + 7200), 1)
        m.timer_due(Timer.RECONNECT, 2)
        m.socket_opened(2)
    m.socket_closed(4401, "invalid token", 3)
    assert isinstance(m.closed_reason, InvalidTokenError)


def test_a_session_not_resumed_is_reported_with_the_jobs_in_flight() -> None:
    m = machine()
    welcomed(m)
    running, _ = m.submit("sleep", {"seconds": 5}, 0)
    m.frame_received(text(Accepted(ref=running, job_id="j-1")), 0)
    unanswered, _ = m.submit("echo", {}, 0)
    m.socket_closed(1011, "bus", 1)
    queued, _ = m.submit("echo", {"later": True}, 1)  # never sent: safe in a new session
    actions = resume(m, 2, welcome("s-2", reason="expired"))
    [reset] = [a for a in actions if isinstance(a, SessionReset)]
    assert (reset.lost.reason, reset.lost.session_id) == ("expired", "s-1")
    assert (reset.lost.job_ids, reset.lost.submit_refs) == (("j-1",), (unanswered,))
    failed = {a.ref: a.error for a in actions if isinstance(a, RequestFailed)}
    assert set(failed) == {running, unanswered}
    assert all(isinstance(e, SessionResetError) for e in failed.values())
    [submit] = frames(actions)
    assert isinstance(submit, Submit)
    assert submit.ref == queued
    assert m.session_id == "s-2"


def test_a_refused_resume_starts_a_new_session_and_says_what_was_lost() -> None:
    m = machine()
    welcomed(m)
    ref, _ = m.submit("echo", {}, 0)
    m.frame_received(text(Accepted(ref=ref, job_id="j-1")), 0)
    m.socket_closed(1011, "bus", 1)
    m.timer_due(Timer.RECONNECT, 2)
    m.socket_opened(2)
    actions = m.socket_closed(4403, "not your session", 2)
    [reset] = [a for a in actions if isinstance(a, SessionReset)]
    assert (reset.lost.reason, reset.lost.job_ids) == ("refused", ("j-1",))
    m.timer_due(Timer.RECONNECT, 3)
    [hello] = frames(m.socket_opened(3))
    assert isinstance(hello, Hello)
    assert hello.resume is None


def test_acks_that_could_not_be_sent_go_out_after_the_resumed_welcome() -> None:
    m = machine()
    welcomed(m)
    [handed] = m.frame_received(deliver(3), 0)
    assert isinstance(handed, MessageDelivery)
    m.socket_closed(None, "reset by peer", 1)
    assert m.handled("m-3") == []  # no socket: kept
    actions = resume(m, 2, welcome(resumed=True))
    assert frames(actions) == [Ack(seq=3)]
    # Its redelivery is acked, not handed over again.
    assert m.frame_received(deliver(3, redelivered=True), 2) == [SendFrame(Ack(seq=3))]


def test_acks_of_a_lost_session_are_never_sent_in_the_new_one() -> None:
    m = machine()
    welcomed(m)
    m.frame_received(deliver(3), 0)
    m.frame_received(deliver(4), 0)
    m.handled("m-3")
    m.socket_closed(None, "", 1)
    actions = resume(m, 2, welcome("s-2", reason="unknown"))
    assert not [f for f in frames(actions) if isinstance(f, Ack)]
    assert m.handled("m-4") == []  # handed over in s-1: seq 4 means nothing in s-2


def test_a_delivery_in_the_applications_hands_is_not_handed_over_twice() -> None:
    m = machine()
    welcomed(m)
    assert len(m.frame_received(deliver(5), 0)) == 1
    assert m.frame_received(deliver(5, redelivered=True), 0) == []
    assert m.handled("m-5") == [SendFrame(Ack(seq=5))]
    assert m.handled("m-5") == []


def test_dedupe_survives_a_restart_on_the_same_file(tmp_path: Path) -> None:
    first = machine(seen=SeenIds(state=ClientState(tmp_path / "state.db")))
    welcomed(first)
    first.frame_received(deliver(9), 0)
    first.handled("m-9")
    again = machine(seen=SeenIds(state=ClientState(tmp_path / "state.db")))
    welcomed(again)
    assert again.frame_received(deliver(9, redelivered=True), 0) == [SendFrame(Ack(seq=9))]


def test_a_submit_while_away_goes_out_after_the_welcome() -> None:
    m = machine()
    m.start(0)
    ref, actions = m.submit("echo", {"x": 1}, 0)
    assert frames(actions) == []
    m.socket_opened(0)
    [submit] = frames(m.frame_received(welcome(), 0))
    assert submit == Submit(ref=ref, kind="echo", payload={"x": 1}, idempotency_key=f"n-{ref}")


def test_a_submit_unanswered_when_the_connection_ended_goes_out_again_with_its_key() -> None:
    m = machine()
    welcomed(m)
    ref, actions = m.submit("echo", {}, 0, idempotency_key="mine")
    [sent] = frames(actions)
    m.socket_closed(1011, "x", 1)
    again = frames(resume(m, 2, welcome(resumed=True)))
    assert again == [sent]
    m.frame_received(text(Accepted(ref=ref, job_id="j-1")), 2)
    m.socket_closed(1011, "x", 3)
    assert frames(resume(m, 4, welcome(resumed=True))) == []  # accepted: never again


def test_a_deadline_fails_the_request_even_while_away() -> None:
    m = machine()
    m.start(0)
    ref, actions = m.submit("echo", {}, 0, deadline=5)
    assert StartTimer(Timer.DEADLINE, 5) in actions
    actions = m.timer_due(Timer.DEADLINE, 5)
    [failed] = [a for a in actions if isinstance(a, RequestFailed)]
    assert failed.ref == ref
    assert isinstance(failed.error, DeadlineExceededError)
    assert isinstance(failed.error, TimeoutError)
    assert not [a for a in actions if isinstance(a, StartTimer)]  # nothing else waits
    m.socket_opened(5)
    assert frames(m.frame_received(welcome(), 5)) == []  # not sent after all


def test_a_job_is_accepted_then_progresses_then_ends() -> None:
    m = machine()
    welcomed(m)
    ref, _ = m.submit("translate", {}, 0)
    assert m.frame_received(text(Accepted(ref=ref, job_id="j-1")), 0) == [JobAccepted(ref, "j-1")]
    [progress] = m.frame_received(deliver(2, "progress", "j-1", id="j-1:progress:1"), 0)
    assert isinstance(progress, JobDelivery)
    assert progress.ref == ref
    [result] = m.frame_received(deliver(3, "result", "j-1"), 0)
    assert isinstance(result, JobDelivery)
    assert result.deliver.kind == "result"


def test_a_fast_jobs_deliveries_before_its_accepted_wait_for_it() -> None:
    m = machine()
    welcomed(m)
    ref, _ = m.submit("echo", {}, 0)
    assert m.frame_received(deliver(2, "result", "j-1"), 0) == []
    [accepted, result] = m.frame_received(text(Accepted(ref=ref, job_id="j-1")), 0)
    assert accepted == JobAccepted(ref, "j-1")
    assert isinstance(result, JobDelivery)
    assert result.deliver.seq == 2


def test_a_delivery_nobody_waits_for_is_acked() -> None:
    m = machine()
    welcomed(m)
    actions = m.frame_received(deliver(2, "result", "j-gone"), 0)
    assert SendFrame(Ack(seq=2)) in actions


def test_a_refused_submit_fails_with_the_code() -> None:
    m = machine()
    welcomed(m)
    ref, _ = m.submit("nope", {}, 0)
    [failed] = m.frame_received(
        text(Error(ref=ref, code=ErrorCode.NO_SUCH_KIND, message="no node serves nope")),
        0,
    )
    assert isinstance(failed, RequestFailed)
    assert isinstance(failed.error, RequestRefusedError)
    assert (failed.error.code, failed.error.retryable) == ("no_such_kind", False)


def unavailable(ref: str) -> str:
    return text(Error(ref=ref, code=ErrorCode.UNAVAILABLE, message="the store did not answer"))


def retry_timer(actions: list[Action]) -> float:
    [at] = [a.at for a in actions if isinstance(a, StartTimer) and a.timer is Timer.RETRY]
    return at


def test_a_submit_the_gateway_could_not_store_goes_again_with_its_key() -> None:
    m = machine()
    welcomed(m)
    ref, actions = m.submit("echo", {"x": 1}, 0)
    [sent] = frames(actions)
    answered = m.frame_received(unavailable(ref), 10)
    assert not any(isinstance(a, RequestFailed) for a in answered)
    at = retry_timer(answered)
    assert 10 < at < 10 + 2 * RETRY_FIRST_S
    assert frames(m.timer_due(Timer.RETRY, at)) == [sent]  # the same idempotency key
    assert m.frame_received(text(Accepted(ref=ref, job_id="j-1")), at) == [JobAccepted(ref, "j-1")]


def test_a_submit_refused_every_time_fails_with_the_refusal_after_its_retries() -> None:
    m = machine()
    welcomed(m)
    ref, _ = m.submit("echo", {}, 0)
    now, waits = 0.0, []
    for _ in range(RETRIES):
        at = retry_timer(m.frame_received(unavailable(ref), now))
        waits.append(at - now)
        now = at
        m.timer_due(Timer.RETRY, now)
    assert waits == sorted(waits)  # doubling (the jitter is fixed here)
    [failed] = [a for a in m.frame_received(unavailable(ref), now) if isinstance(a, RequestFailed)]
    assert isinstance(failed.error, RequestRefusedError)
    assert failed.error.code == "unavailable"


def test_a_refused_submit_whose_deadline_comes_first_fails_with_the_refusal_now() -> None:
    m = machine()
    welcomed(m)
    ref, _ = m.submit("echo", {}, 0, deadline=0.1)
    [failed] = [a for a in m.frame_received(unavailable(ref), 0) if isinstance(a, RequestFailed)]
    assert isinstance(failed.error, RequestRefusedError)


def test_a_retry_due_while_away_goes_after_the_welcome() -> None:
    m = machine()
    welcomed(m)
    ref, _ = m.submit("echo", {}, 0)
    at = retry_timer(m.frame_received(unavailable(ref), 0))
    m.socket_closed(1011, "gateway crashed", 0)
    assert frames(m.timer_due(Timer.RETRY, at)) == []
    m.timer_due(Timer.RECONNECT, 5)
    m.socket_opened(5)
    [again] = [
        f for f in frames(m.frame_received(welcome(resumed=True), 5)) if isinstance(f, Submit)
    ]
    assert again.ref == ref


def test_a_subscribe_the_gateway_could_not_record_is_asked_again() -> None:
    m = machine()
    welcomed(m)
    waiter, actions = m.subscribe("pipeline.42", 0)
    [first] = frames(actions)
    assert isinstance(first, Subscribe)
    refusal = Error(ref=first.ref, code=ErrorCode.UNAVAILABLE, message="the bus is away")
    answered = m.frame_received(text(refusal), 1)
    assert not any(isinstance(a, RequestFailed) for a in answered)
    [again] = frames(m.timer_due(Timer.RETRY, retry_timer(answered)))
    assert isinstance(again, Subscribe)
    assert again.topic == "pipeline.42"
    subscribed = m.frame_received(text(Subscribed(ref=again.ref, topic="pipeline.42")), 2)
    assert subscribed == [TopicSubscribed(waiter, "pipeline.42")]


def test_a_subscribe_refused_for_good_fails_at_once() -> None:
    m = machine()
    welcomed(m)
    waiter, actions = m.subscribe("secret.1", 0)
    [ask] = frames(actions)
    assert isinstance(ask, Subscribe)
    refusal = Error(ref=ask.ref, code=ErrorCode.FORBIDDEN_TOPIC, message="no", topic="secret.1")
    [failed] = m.frame_received(text(refusal), 1)
    assert isinstance(failed, RequestFailed)
    assert failed.ref == waiter


def test_a_submit_larger_than_the_gateway_takes_is_refused_before_sending() -> None:
    m = machine()
    welcomed(m)  # max_frame_bytes 4096
    with pytest.raises(FrameTooLargeError):
        m.submit("echo", {"text": "x" * 5000}, 0)


def test_the_token_is_refreshed_ahead_of_exp() -> None:
    m = machine(can_renew=True, exp=WALL + 30)  # a 30 s token: 10 s ahead
    assert StartTimer(Timer.REFRESH, 20) in m.start(0)
    m.socket_opened(0)
    m.frame_received(welcome(), 0)
    assert m.timer_due(Timer.REFRESH, 20) == [RenewToken()]
    assert m.timer_due(Timer.REFRESH, 21) == []  # one renewal at a time
    fresh = jwt(WALL + 50, iat=WALL + 20)
    [refresh] = frames(m.token_renewed(fresh, 21))
    assert isinstance(refresh, Refresh)
    assert refresh.token == fresh
    actions = m.frame_received(text(Refreshed(ref=refresh.ref, exp=int(WALL) + 50)), 21)
    # the next renewal: a third of its 30 s life ahead of its exp (wall clock WALL at now 21)
    assert actions == [StartTimer(Timer.REFRESH, 21 + 50 - 10)]


def test_a_refused_refresh_is_tried_again() -> None:
    m = machine(can_renew=True, exp=WALL + 30)
    welcomed(m)
    m.timer_due(Timer.REFRESH, 20)
    [refresh] = frames(m.token_renewed(jwt(WALL + 60), 20))
    assert isinstance(refresh, Refresh)
    bad = Error(ref=refresh.ref, code=ErrorCode.BAD_TOKEN, message="token expired")
    actions = m.frame_received(text(bad), 20)
    assert StartTimer(Timer.REFRESH, 25) in actions
    assert m.timer_due(Timer.REFRESH, 25) == [RenewToken()]


def test_subscriptions_are_restored_by_a_resume_and_asked_again_in_a_new_session() -> None:
    m = machine()
    welcomed(m)
    ref, actions = m.subscribe("pipeline.42", 0)
    [subscribe] = frames(actions)
    assert isinstance(subscribe, Subscribe)
    answer = m.frame_received(text(Subscribed(ref=subscribe.ref, topic="pipeline.42")), 0)
    assert answer == [TopicSubscribed(ref, "pipeline.42")]
    m.frame_received(text(Event(topic="pipeline.42", seq=10, data=1, snapshot=True)), 0)
    m.frame_received(text(Event(topic="pipeline.42", seq=12, data=2)), 0)
    m.socket_closed(1011, "x", 1)
    actions = resume(m, 2, welcome(resumed=True))
    assert frames(actions) == []  # the gateway restores it
    # The snapshot again (seq 12 became it): handed over already; then what is new.
    assert (
        m.frame_received(text(Event(topic="pipeline.42", seq=12, data=2, snapshot=True)), 2) == []
    )
    [new] = m.frame_received(text(Event(topic="pipeline.42", seq=13, data=3)), 2)
    assert isinstance(new, TopicEvent)
    m.socket_closed(1011, "x", 3)
    [again] = frames(resume(m, 4, welcome("s-2", reason="expired")))
    assert isinstance(again, Subscribe)
    assert again.topic == "pipeline.42"


def test_close_says_bye_and_stops_when_the_gateway_closes() -> None:
    m = machine()
    welcomed(m)
    assert frames(m.close(0)) == [Bye()]
    m.socket_closed(1000, "bye", 1)
    assert m.phase is Phase.CLOSED
    with pytest.raises(ClientClosedError):
        m.submit("echo", {}, 1)


def kept(actions: list[Action]) -> list[SavedSession | None]:
    return [a.session for a in actions if isinstance(a, KeepSession)]


def test_a_new_session_is_kept_and_a_saved_one_is_resumed_by_the_next_process() -> None:
    first = machine()
    first.start(0)
    first.socket_opened(0)
    assert kept(first.frame_received(welcome("s-1"), 0)) == [SavedSession("s-1", "rt")]
    again = machine(session=SavedSession("s-1", "rt"))
    again.start(0)
    [hello] = frames(again.socket_opened(0))
    assert isinstance(hello, Hello)
    assert hello.resume is not None
    assert (hello.resume.session_id, hello.resume.resume_token) == ("s-1", "rt")
    assert kept(again.frame_received(welcome("s-1", resumed=True), 0)) == []  # the same one


def test_a_saved_session_that_is_gone_is_told_and_the_new_one_kept() -> None:
    m = machine(session=SavedSession("s-old", "rt"))
    m.start(0)
    m.socket_opened(0)
    actions = m.frame_received(welcome("s-2", reason="expired"), 0)
    [reset] = [a for a in actions if isinstance(a, SessionReset)]
    assert (reset.lost.session_id, reset.lost.reason) == ("s-old", "expired")
    assert kept(actions) == [SavedSession("s-2", "rt")]


def test_a_session_ended_or_taken_over_is_not_kept_and_one_left_resumable_is() -> None:
    ended = machine()
    welcomed(ended)
    ended.close(0)
    assert kept(ended.socket_closed(1000, "bye", 1)) == [None]

    taken = machine()
    welcomed(taken)
    assert kept(taken.socket_closed(4409, "session taken over", 1)) == [None]

    left = machine()
    welcomed(left)
    actions = left.close(0, end_session=False)
    assert frames(actions) == []  # no bye: the session stays resumable for its TTL
    assert left.phase is Phase.CLOSED
    assert kept(actions) == []


@pytest.mark.parametrize("token", ["", "a.b", "a.!!!.c", "a.WzFd.c"])
def test_a_token_that_is_no_jwt_is_refused_clearly(token: str) -> None:
    with pytest.raises(InvalidTokenError):
        token_times(token)


def test_the_architecture_diagram_is_the_table() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "sdk-python.md").read_text()
    assert diagram() in doc
