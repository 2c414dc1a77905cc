import pytest
from hypothesis import given
from hypothesis import strategies as st

from ackwire.bus import subjects
from ackwire.bus.subjects import InvalidNameError

SUBJECT_SPECIALS = set(".*> \t\r\n")
KV_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=/")


@given(st.text(min_size=1, max_size=256))
def test_any_user_id_becomes_one_safe_token(user: str) -> None:
    token = subjects.user_token(user)
    assert not SUBJECT_SPECIALS & set(token)
    assert set(token) <= KV_KEY_CHARS


@given(st.text(min_size=1, max_size=256), st.text(min_size=1, max_size=256))
def test_two_users_never_share_a_token(a: str, b: str) -> None:
    if a != b:
        assert subjects.user_token(a) != subjects.user_token(b)


def test_plain_user_ids_stay_readable() -> None:
    assert subjects.user_token("alice_01-x") == "alice_01-x"
    assert subjects.user_token("alice@example.com").startswith("=")


@pytest.mark.parametrize("user", ["", "x" * 257])
def test_user_ids_out_of_bounds_are_refused(user: str) -> None:
    with pytest.raises(InvalidNameError):
        subjects.user_token(user)


def test_new_session_ids_are_valid_and_distinct() -> None:
    ids = {subjects.new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(subjects.session_token(i) == i for i in ids)


@pytest.mark.parametrize(
    "session_id",
    ["s-short", "s-aaaaaaaaaaaaaaaa.>", "s-aaaaaaaaaaaaaaaa*", "x-aaaaaaaaaaaaaaaaaa", ""],
)
def test_foreign_session_ids_are_refused(session_id: str) -> None:
    with pytest.raises(InvalidNameError):
        subjects.session_token(session_id)


@pytest.mark.parametrize("name", ["gw.1", "node-*", "a>", "", "x" * 65, "gw 1"])
def test_service_names_with_subject_specials_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        subjects.service_token(name)


def test_a_session_key_is_its_id_and_refuses_anything_else() -> None:
    sid = subjects.new_session_id()
    assert subjects.session_key(sid) == sid
    with pytest.raises(InvalidNameError):
        subjects.session_key("s-short")
    with pytest.raises(InvalidNameError):
        subjects.session_key("s-" + "a" * 20 + ".>")


def test_a_gateway_is_asked_to_release_on_its_own_subject() -> None:
    assert subjects.release_subject("gw-1") == "ackwire.gateway.gw-1.release"
    with pytest.raises(InvalidNameError):
        subjects.release_subject("gw.*")
