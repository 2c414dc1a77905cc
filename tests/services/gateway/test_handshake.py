"""protocol.md, Transport, Handshake and Keep-alive, against a real gateway on a real NATS."""

import time
from collections.abc import Callable

import jwt
import pytest
from websockets.exceptions import InvalidStatus

from ackwire.gateway.server import Gateway
from ackwire.settings import Settings
from ackwire.wire.codes import CloseCode, ErrorCode
from ackwire.wire.frames import Bye, Error, Hello, Ping, Pong, ResumeRequest, Welcome
from ackwire.wire.guard import MAX_BAD_FRAMES_IN_A_ROW
from support.auth import TEST_SECRET
from support.client import (
    close_code_when_never_answering_pings,
    closed_with,
    open_ws,
    receive,
    send,
    welcomed,
)

MakeToken = Callable[..., str]


async def test_welcome_carries_every_field_of_the_contract(
    gateway: Gateway, settings: Settings, make_token: MakeToken
) -> None:
    ws, welcome = await welcomed(gateway.url, make_token("alice"))
    assert ws.subprotocol == "ackwire.v1"
    assert welcome.session_id.startswith("s-")
    assert len(welcome.resume_token) >= 32
    assert welcome.resumed is False
    assert welcome.reason == "new"
    assert welcome.gateway == "gw-test"
    assert welcome.heartbeat_s == settings.heartbeat_s
    assert welcome.max_frame_bytes == settings.max_frame_bytes
    assert welcome.window == settings.window
    await ws.close()


async def test_every_welcome_opens_a_distinct_session(
    gateway: Gateway, make_token: MakeToken
) -> None:
    first, a = await welcomed(gateway.url, make_token())
    second, b = await welcomed(gateway.url, make_token())
    assert a.session_id != b.session_id
    assert a.resume_token != b.resume_token
    await first.close()
    await second.close()


async def test_a_client_offering_no_subprotocol_is_accepted(
    gateway: Gateway, make_token: MakeToken
) -> None:
    ws = await open_ws(gateway.url, subprotocols=None)
    assert ws.subprotocol is None
    await send(ws, Hello(token=make_token()))
    assert isinstance(await receive(ws), Welcome)
    await ws.close()


async def test_ackwire_v1_is_selected_among_other_offers(gateway: Gateway) -> None:
    ws = await open_ws(gateway.url, subprotocols=["chat", "ackwire.v1"])
    assert ws.subprotocol == "ackwire.v1"
    await ws.close()


async def test_a_client_offering_only_other_subprotocols_is_refused(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await open_ws(gateway.url, subprotocols=["ackwire.v2"])
    assert refused.value.response.status_code == 400


async def test_no_hello_in_time_closes_4001(gateway: Gateway, settings: Settings) -> None:
    ws = await open_ws(gateway.url)
    started = time.monotonic()
    code, _ = await closed_with(ws, timeout=settings.hello_timeout_s + 3)
    assert code == CloseCode.HELLO_TIMEOUT
    assert time.monotonic() - started >= settings.hello_timeout_s * 0.9


@pytest.mark.parametrize(
    "first",
    ['{"type": "ping"}', '{"type": "ack", "seq": 1}', "not json", b"\x01\x02", '{"type": "hello"}'],
)
async def test_anything_before_hello_closes_4401(gateway: Gateway, first: str | bytes) -> None:
    ws = await open_ws(gateway.url)
    await send(ws, first)
    code, _ = await closed_with(ws)
    assert code == CloseCode.UNAUTHORIZED


def _token(claims: dict[str, object], key: str = TEST_SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


#: An `exp` far enough ahead for tokens made when tests are collected: the suite runs
#: for minutes, and a token meant to fail for another reason must not expire first.
LATER = int(time.time()) + 86400


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "missing"),
        ("not-a-jwt", "invalid"),
        (
            _token(
                {"sub": "alice", "exp": LATER},
                key="another-secret-that-is-long-enough-for-hs256",
            ),
            "invalid",
        ),
        (_token({"sub": "alice", "exp": int(time.time()) - 60}), "expired"),
        (_token({"sub": "alice"}), "exp"),
        (_token({"exp": LATER}), "sub"),
        (_token({"sub": "", "exp": LATER}), "sub"),
        (_token({"sub": "alice", "exp": LATER, "topics": "a.>"}), "topics"),
        (
            jwt.encode({"sub": "alice", "exp": LATER}, "", algorithm="none"),
            "invalid",
        ),
    ],
)
async def test_a_missing_bad_or_expired_token_closes_4401(
    gateway: Gateway, token: str, reason: str
) -> None:
    ws = await open_ws(gateway.url)
    await send(ws, Hello(token=token))
    code, why = await closed_with(ws)
    assert code == CloseCode.UNAUTHORIZED
    assert reason in why


async def test_a_gateway_with_an_audience_closes_4401_on_a_token_without_it(
    settings: Settings,
) -> None:
    strict = settings.model_copy(update={"jwt_audience": "ackwire-test"})
    async with Gateway(strict, name="gw-aud", host="127.0.0.1", port=0) as gateway:
        for token, reason in [
            (_token({"sub": "alice", "exp": LATER}), "no `aud` claim"),
            (_token({"sub": "alice", "exp": LATER, "aud": "other"}), "not this deployment's"),
        ]:
            ws = await open_ws(gateway.url)
            await send(ws, Hello(token=token))
            code, why = await closed_with(ws)
            assert code == CloseCode.UNAUTHORIZED
            assert reason in why
        ws, _ = await welcomed(
            gateway.url, _token({"sub": "alice", "exp": LATER, "aud": "ackwire-test"})
        )
        await ws.close()


async def test_an_unknown_session_is_not_resumed(gateway: Gateway, make_token: MakeToken) -> None:
    ws = await open_ws(gateway.url)
    resume = ResumeRequest(session_id="s-" + "a" * 22, resume_token="x" * 43, last_seq=3)
    await send(ws, Hello(token=make_token(), resume=resume))
    welcome = await receive(ws)
    assert isinstance(welcome, Welcome)
    assert welcome.resumed is False
    assert welcome.reason == "unknown"
    assert welcome.session_id != resume.session_id
    await ws.close()


@pytest.mark.parametrize(
    ("frame", "ref"),
    [
        (b'{"type": "ping"}', None),
        ("{not json", None),
        ("[1, 2]", None),
        ('{"no_type": 1}', None),
        ('{"type": "teleport", "ref": "c-7"}', "c-7"),
        ('{"type": "ack", "seq": "3"}', None),
        ('{"type": "submit", "ref": "c-8", "kind": "echo", "payload": []}', "c-8"),
        ('{"type": "subscribe", "ref": "c-9", "topic": 42}', "c-9"),
        ('{"type": "hello", "token": "again"}', None),
    ],
)
async def test_a_bad_frame_gets_bad_frame_and_the_connection_stays_open(
    gateway: Gateway, make_token: MakeToken, frame: str | bytes, ref: str | None
) -> None:
    ws, _ = await welcomed(gateway.url, make_token())
    await send(ws, frame)
    error = await receive(ws)
    assert isinstance(error, Error)
    assert error.code is ErrorCode.BAD_FRAME
    assert error.ref == ref
    assert error.message
    await send(ws, Ping())
    assert isinstance(await receive(ws), Pong)
    await ws.close()


async def test_ten_bad_frames_in_a_row_close_1008(gateway: Gateway, make_token: MakeToken) -> None:
    ws, _ = await welcomed(gateway.url, make_token())
    for _ in range(MAX_BAD_FRAMES_IN_A_ROW - 1):
        await send(ws, "garbage")
        assert isinstance(await receive(ws), Error)
    await send(ws, "garbage")
    code, _ = await closed_with(ws)
    assert code == CloseCode.POLICY_VIOLATION


async def test_bad_frames_that_are_not_in_a_row_do_not_close(
    gateway: Gateway, make_token: MakeToken
) -> None:
    ws, _ = await welcomed(gateway.url, make_token())
    for _ in range(3):
        for _ in range(MAX_BAD_FRAMES_IN_A_ROW - 1):
            await send(ws, "garbage")
            assert isinstance(await receive(ws), Error)
        await send(ws, Ping())
        assert isinstance(await receive(ws), Pong)
    assert ws.close_code is None
    await ws.close()


async def test_a_frame_above_max_frame_bytes_closes_1009(
    gateway: Gateway, settings: Settings, make_token: MakeToken
) -> None:
    ws, _ = await welcomed(gateway.url, make_token())
    at_limit = '{"type": "ping", "pad": "' + "x" * (settings.max_frame_bytes - 30) + '"}'
    assert len(at_limit) <= settings.max_frame_bytes
    await send(ws, at_limit)
    assert isinstance(await receive(ws), Pong)
    await send(ws, '{"type": "ping", "pad": "' + "x" * settings.max_frame_bytes + '"}')
    code, _ = await closed_with(ws)
    assert code == CloseCode.MESSAGE_TOO_BIG


async def test_a_hello_above_max_frame_bytes_closes_1009(
    gateway: Gateway, settings: Settings
) -> None:
    ws = await open_ws(gateway.url)
    await send(ws, Hello(token="x" * (settings.max_frame_bytes + 1)))
    code, _ = await closed_with(ws)
    assert code == CloseCode.MESSAGE_TOO_BIG


async def test_ping_frames_get_pong_frames(gateway: Gateway, make_token: MakeToken) -> None:
    ws, _ = await welcomed(gateway.url, make_token())
    for _ in range(3):
        await send(ws, Ping())
        assert isinstance(await receive(ws), Pong)
    await ws.close()


async def test_bye_closes_1000(gateway: Gateway, make_token: MakeToken) -> None:
    ws, _ = await welcomed(gateway.url, make_token())
    await send(ws, Bye())
    code, reason = await closed_with(ws)
    assert code == CloseCode.NORMAL
    assert reason == "bye"


async def test_the_gateway_pings_and_closes_a_client_that_never_pongs(
    settings: Settings, make_token: MakeToken
) -> None:
    quick = settings.model_copy(update={"heartbeat_s": 0.2})
    async with Gateway(quick, name="gw-quick", host="127.0.0.1", port=0) as gateway:
        started = time.monotonic()
        pings, code = await close_code_when_never_answering_pings(
            gateway.url, Hello(token=make_token()), timeout=5
        )
    assert pings >= 1
    assert code == CloseCode.INTERNAL_ERROR  # websockets' "keepalive ping timeout"
    assert time.monotonic() - started >= 2 * quick.heartbeat_s
