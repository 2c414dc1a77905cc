"""The resume rules, without I/O: who may resume what, and what a fresh session is told."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from ackwire.sessions.record import (
    Found,
    Gone,
    Holder,
    Refuse,
    Resume,
    SessionRecord,
    SessionState,
    StartFresh,
    judge_resume,
    lookup_key,
    new_resume_token,
)
from ackwire.wire.frames import ResumeRequest

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TTL = timedelta(hours=1)
HOLDER = Holder("gw-1", "inc-1", "c-1")
TOKEN = new_resume_token()


def record(state: SessionState = SessionState.LIVE, changed: datetime = NOW) -> SessionRecord:
    opened = SessionRecord.opened(
        session_id="s-" + "a" * 22, user="alice", resume_token=TOKEN, holder=HOLDER, now=NOW
    )
    return opened.model_copy(update={"state": state, "changed_at": changed})


def request(token: str = TOKEN) -> ResumeRequest:
    return ResumeRequest(session_id="s-" + "a" * 22, resume_token=token)


def judge(req: ResumeRequest | None, user: str, found: Found | Gone | None) -> object:
    return judge_resume(req, user, found, now=NOW, ttl=TTL)


def test_no_resume_asked_for_is_a_new_session() -> None:
    assert judge(None, "alice", Found(record(), 1)) == StartFresh("new")


def test_no_trace_is_unknown_and_a_tombstone_is_expired() -> None:
    assert judge(request(), "alice", None) == StartFresh("unknown")
    assert judge(request(), "alice", Gone()) == StartFresh("expired")


def test_another_users_session_or_a_wrong_token_is_refused() -> None:
    assert isinstance(judge(request(), "mallory", Found(record(), 1)), Refuse)
    assert isinstance(judge(request("guess"), "alice", Found(record(), 1)), Refuse)
    # Refused even once ended: an ended session is no one else's to probe.
    assert isinstance(
        judge(request("guess"), "alice", Found(record(SessionState.ENDED), 1)), Refuse
    )


def test_an_ended_session_or_one_detached_past_its_ttl_has_expired() -> None:
    assert judge(request(), "alice", Found(record(SessionState.ENDED), 1)) == StartFresh("expired")
    stale = record(SessionState.DETACHED, changed=NOW - TTL - timedelta(seconds=1))
    assert judge(request(), "alice", Found(stale, 1)) == StartFresh("expired")


def test_a_live_or_recently_detached_session_resumes() -> None:
    for state in (SessionState.LIVE, SessionState.DETACHED):
        found = Found(record(state, changed=NOW - TTL + timedelta(seconds=1)), 7)
        assert judge(request(), "alice", found) == Resume(found)


def test_ids_that_cannot_be_ours_are_not_looked_up() -> None:
    assert lookup_key(ResumeRequest(session_id="s-../../x", resume_token="t")) is None
    assert lookup_key(request()) == "s-" + "a" * 22


@given(user=st.text(min_size=1), token=st.text(min_size=1), state=st.sampled_from(SessionState))
def test_only_the_owner_with_the_token_ever_resumes(
    user: str, token: str, state: SessionState
) -> None:
    verdict = judge(
        ResumeRequest(session_id="s-" + "a" * 22, resume_token=token), user, Found(record(state), 1)
    )
    if isinstance(verdict, Resume):
        assert user == "alice"
        assert token == TOKEN


def test_a_claim_moves_the_holder_and_a_let_go_keeps_the_highest_sent() -> None:
    claimed = record(SessionState.DETACHED).claimed(Holder("gw-2", "inc-2", "c-2"), NOW)
    assert (claimed.state, claimed.holder) == (SessionState.LIVE, Holder("gw-2", "inc-2", "c-2"))
    ended = claimed.let_go(SessionState.ENDED, sent_upto=9, now=NOW)
    assert ended.let_go(SessionState.DETACHED, sent_upto=3, now=NOW).sent_upto == 9
