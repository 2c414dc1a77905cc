import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ackwire.wire import BadFrame, encode, parse_client_frame, parse_server_frame
from ackwire.wire.codes import ErrorCode
from ackwire.wire.frames import (
    REF_MAX,
    TOKEN_MAX,
    Ack,
    Error,
    Hello,
    Ping,
    Refresh,
    Refreshed,
    Submit,
    Welcome,
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"type": "ping"}', Ping()),
        ('{"type": "ack", "seq": 18}', Ack(seq=18)),
        ('{"type": "ack", "upto": 18}', Ack(upto=18)),
        ('{"type": "hello", "token": "t", "future_field": [1, 2]}', Hello(token="t")),
        (
            '{"type": "submit", "ref": "c-1", "kind": "echo", "payload": {"a": [1, null]}}',
            Submit(ref="c-1", kind="echo", payload={"a": [1, None]}),
        ),
        ('{"type": "refresh", "ref": "c-9", "token": "t"}', Refresh(ref="c-9", token="t")),
        # An empty token is well formed: the verifier answers it (`bad_token`, "missing token").
        ('{"type": "refresh", "ref": "c-9", "token": ""}', Refresh(ref="c-9", token="")),
    ],
)
def test_well_formed_frames_parse(data: str, expected: object) -> None:
    assert parse_client_frame(data) == expected


@pytest.mark.parametrize(
    ("data", "reason_contains"),
    [
        (b'{"type": "ping"}', "binary"),
        ("{", "not valid JSON"),
        ("[]", "object"),
        ('"ping"', "object"),
        ("{}", "`type`"),
        ('{"type": 7}', "unknown frame type"),
        ('{"type": "teleport"}', "unknown frame type"),
        ('{"type": "ack", "seq": "18"}', "seq"),  # no coercion: a string is not a seq
        ('{"type": "ack", "seq": 1.5}', "seq"),
        ('{"type": "ack", "seq": true}', "seq"),
        ('{"type": "ack"}', "exactly one"),
        ('{"type": "ack", "seq": 1, "upto": 2}', "exactly one"),
        ('{"type": "ack", "seq": 0}', "seq"),
        ('{"type": "submit", "ref": "c-1", "kind": "echo", "payload": 3}', "payload"),
        ('{"type": "hello"}', "token"),
    ],
)
def test_malformed_frames_are_bad_frames_that_say_why(
    data: str | bytes, reason_contains: str
) -> None:
    result = parse_client_frame(data)
    assert isinstance(result, BadFrame)
    assert reason_contains in result.reason


@pytest.mark.parametrize(
    ("data", "reason_contains"),
    [
        ('{"type": "refresh", "ref": "c-9"}', "token"),
        ('{"type": "refresh", "ref": "c-9", "token": 42}', "token"),
        ('{"type": "refresh", "ref": "c-9", "token": null}', "token"),
        ('{"type": "refresh", "ref": "c-9", "token": ["a"]}', "token"),
        ('{"type": "refresh", "ref": "c-9", "token": "' + "x" * (TOKEN_MAX + 1) + '"}', "token"),
    ],
)
def test_a_bad_refresh_is_a_bad_frame_that_echoes_its_ref(data: str, reason_contains: str) -> None:
    result = parse_client_frame(data)
    assert isinstance(result, BadFrame)
    assert reason_contains in result.reason
    assert result.ref == "c-9"


@pytest.mark.parametrize(
    "data",
    [
        '{"type": "refresh", "token": "t"}',
        '{"type": "refresh", "ref": "", "token": "t"}',
        '{"type": "refresh", "ref": 9, "token": "t"}',
        '{"type": "refresh", "ref": "' + "r" * (REF_MAX + 1) + '", "token": "t"}',
    ],
)
def test_a_refresh_without_a_readable_ref_is_a_bad_frame_without_one(data: str) -> None:
    result = parse_client_frame(data)
    assert isinstance(result, BadFrame)
    assert "ref" in result.reason
    assert result.ref is None


def test_refreshed_round_trips_with_an_integer_exp() -> None:
    refreshed = Refreshed(ref="c-9", exp=1767225600)
    text = encode(refreshed)
    assert json.loads(text) == {"type": "refreshed", "ref": "c-9", "exp": 1767225600}
    assert parse_server_frame(text) == refreshed
    assert isinstance(
        parse_server_frame('{"type": "refreshed", "ref": "c-9", "exp": 1.5}'), BadFrame
    )


def test_bad_token_is_a_stable_error_code() -> None:
    error = Error(ref="c-9", code=ErrorCode.BAD_TOKEN, message="token expired")
    assert json.loads(encode(error))["code"] == "bad_token"


def test_a_bad_frame_keeps_a_readable_ref() -> None:
    result = parse_client_frame('{"type": "submit", "ref": "c-9", "kind": 5, "payload": {}}')
    assert isinstance(result, BadFrame)
    assert result.ref == "c-9"


def test_a_bad_frame_drops_an_unreadable_ref() -> None:
    result = parse_client_frame('{"type": "submit", "ref": 12, "payload": {}}')
    assert isinstance(result, BadFrame)
    assert result.ref is None


def test_server_frames_round_trip_without_null_fields() -> None:
    welcome = Welcome(
        session_id="s-x",
        resume_token="r",
        resumed=False,
        reason="new",
        gateway="gw-1",
        heartbeat_s=15,
        max_frame_bytes=65536,
        window=64,
    )
    text = encode(welcome)
    assert parse_server_frame(text) == welcome
    error = Error(code=ErrorCode.BAD_FRAME, message="m")
    assert "ref" not in json.loads(encode(error))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
frame_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["hello", "ack", "submit", "subscribe", "refresh", "ping", "bye", "x"]
        )
    },
    optional={
        "seq": json_values,
        "upto": json_values,
        "ref": json_values,
        "token": json_values,
        "kind": json_values,
        "payload": json_values,
        "topic": json_values,
        "resume": json_values,
    },
)


@given(st.binary() | st.text())
def test_any_bytes_or_text_parse_to_a_frame_or_a_bad_frame(data: bytes | str) -> None:
    result = parse_client_frame(data)
    assert isinstance(result, BadFrame) or result.type in {
        "hello", "ack", "submit", "subscribe", "unsubscribe", "refresh", "ping", "bye"
    }  # fmt: skip


@given(json_values | frame_like)
def test_any_json_parses_to_a_frame_or_a_bad_frame(value: object) -> None:
    result = parse_client_frame(json.dumps(value))
    if isinstance(result, BadFrame):
        assert result.reason
    else:
        assert isinstance(value, dict)
        assert result.type == value["type"]


def test_deeply_nested_json_is_a_bad_frame_not_a_crash() -> None:
    deep = (
        '{"type": "submit", "ref": "r", "kind": "k", "payload": {"a": '
        + "[" * 5000
        + "]" * 5000
        + "}}"
    )
    result = parse_client_frame(deep)
    assert isinstance(result, BadFrame | Submit)


def test_an_error_code_newer_than_the_client_reads_as_unavailable() -> None:
    frame = parse_server_frame(
        '{"type": "error", "ref": "c-1", "code": "quota_exceeded", "message": "try tomorrow"}'
    )
    assert isinstance(frame, Error)
    assert (frame.ref, frame.code) == ("c-1", ErrorCode.UNAVAILABLE)
    assert frame.message == "quota_exceeded: try tomorrow"
    # Anything else wrong with an error frame is still a bad frame.
    assert isinstance(parse_server_frame('{"type": "error", "code": 7, "message": "x"}'), BadFrame)
    assert isinstance(parse_server_frame('{"type": "error", "code": "nope"}'), BadFrame)
