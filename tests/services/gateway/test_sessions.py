"""protocol.md, Handshake: sessions that survive their connections, on two gateways over
one real NATS. Resume anywhere, one live connection per session (4409), 4403 for what is
not yours, `unknown` and `expired`, `bye` for good, and everything owed replayed in order."""

import asyncio
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.aio.client import Client
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.models import Delivery
from ackwire.bus.session_queue import SessionQueue
from ackwire.gateway.server import Gateway
from ackwire.sessions.overview import undelivered
from ackwire.sessions.record import Found, Gone, SessionRecord, SessionState
from ackwire.sessions.table import SessionTable
from ackwire.settings import Settings
from ackwire.wire.codes import CloseCode
from ackwire.wire.frames import Ack, Bye, Hello, ResumeRequest, Welcome
from support.client import (
    closed_with,
    next_deliver,
    open_ws,
    receive,
    resume_hello,
    resumed,
    send,
    welcomed,
)

MakeToken = Callable[..., str]


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[tuple[Client, SessionQueue]]:
    nc = await nats.connect(nats_server.url)
    yield nc, SessionQueue(nc, nc.jetstream())
    await nc.close()


async def until_state(
    nc: Client, session_id: str, state: SessionState | None, timeout: float = 5
) -> None:
    """Wait (bounded) until the session's record is in `state`; `None`: until it is gone."""
    kv = await nc.jetstream().key_value(subjects.SESSIONS_BUCKET)
    watcher = await kv.watch(subjects.session_key(session_id))
    try:
        async with asyncio.timeout(timeout):
            while True:
                entry = await watcher.updates(timeout=timeout)
                if entry is None:
                    continue
                if state is None and entry.operation is not None:
                    return
                if entry.value and SessionRecord.model_validate_json(entry.value).state is state:
                    return
    finally:
        await watcher.stop()


def message(session_id: str, n: int) -> Delivery:
    return Delivery(id=f"m-{n}", kind="message", session_id=session_id, data={"n": n})


async def test_a_session_resumes_on_the_other_gateway_with_the_same_token(
    two_gateways: tuple[Gateway, Gateway], make_token: MakeToken
) -> None:
    gw1, gw2 = two_gateways
    token = make_token("alice")
    ws, first = await welcomed(gw1.url, token)
    assert (first.resumed, first.reason, first.gateway) == (False, "new", "gw-1")
    await ws.close()  # a close by the client is not a `bye`: the session stays resumable
    ws2, again = await resumed(gw2.url, token, first)
    assert again.resumed is True
    assert again.reason is None
    assert again.session_id == first.session_id
    assert again.resume_token == first.resume_token  # a lost welcome never strands a session
    assert again.gateway == "gw-2"
    await ws2.close()


async def test_owed_messages_are_replayed_in_order_after_a_resume(
    two_gateways: tuple[Gateway, Gateway],
    bus: tuple[Client, SessionQueue],
    make_token: MakeToken,
) -> None:
    gw1, gw2 = two_gateways
    nc, queue = bus
    token = make_token("bob")
    ws, welcome = await welcomed(gw1.url, token)
    seqs = [await queue.put(message(welcome.session_id, n)) for n in range(5)]
    seen = [await next_deliver(ws) for _ in range(5)]
    assert [d.seq for d in seen] == seqs
    await send(ws, Ack(seq=seqs[1]))  # one acked; four seen but owed
    await ws.send('{"type": "ping"}')
    await receive(ws)  # the pong: the ack has been read by the gateway
    ws.transport.abort()  # the network drops
    await until_state(nc, welcome.session_id, SessionState.DETACHED)
    later = [await queue.put(message(welcome.session_id, n)) for n in range(5, 7)]

    ws2, _ = await resumed(gw2.url, token, welcome, last_seq=seqs[-1])
    replay = [await next_deliver(ws2) for _ in range(6)]
    owed = [seqs[0], *seqs[2:], *later]
    assert [d.seq for d in replay] == owed  # oldest first, none out of order
    assert [d.id for d in replay] == ["m-0", "m-2", "m-3", "m-4", "m-5", "m-6"]
    assert [d.redelivered for d in replay] == [True, True, True, True, False, False]
    await send(ws2, Ack(upto=later[-1]))
    await ws2.close()


async def test_a_resume_without_last_seq_still_marks_what_the_old_connection_sent(
    two_gateways: tuple[Gateway, Gateway],
    bus: tuple[Client, SessionQueue],
    make_token: MakeToken,
) -> None:
    gw1, gw2 = two_gateways
    _, queue = bus
    token = make_token("bea")
    ws, welcome = await welcomed(gw1.url, token)
    sent = await queue.put(message(welcome.session_id, 0))
    assert (await next_deliver(ws)).seq == sent
    await ws.close()  # the gateway records what this connection had sent
    fresh = await queue.put(message(welcome.session_id, 1))
    ws2, _ = await resumed(gw2.url, token, welcome)
    replay = [await next_deliver(ws2) for _ in range(2)]
    assert [(d.seq, d.redelivered) for d in replay] == [(sent, True), (fresh, False)]
    await ws2.close()


async def test_resuming_another_users_session_or_with_a_wrong_token_closes_4403(
    two_gateways: tuple[Gateway, Gateway], make_token: MakeToken
) -> None:
    gw1, gw2 = two_gateways
    ws, welcome = await welcomed(gw1.url, make_token("carol"))
    await ws.close()
    for hello in (
        resume_hello(make_token("mallory"), welcome),
        Hello(
            token=make_token("carol"),
            resume=ResumeRequest(session_id=welcome.session_id, resume_token="guessed"),
        ),
    ):
        intruder = await open_ws(gw2.url)
        await send(intruder, hello)
        code, _ = await closed_with(intruder)
        assert code == CloseCode.FORBIDDEN
    ws2, again = await resumed(gw2.url, make_token("carol"), welcome)  # still carol's
    assert again.resumed
    await ws2.close()


@pytest.mark.parametrize("session_id", ["s-" + "A" * 22, "not-a-session-id", "s-../.>"])
async def test_an_unknown_session_gets_a_new_one(
    two_gateways: tuple[Gateway, Gateway], make_token: MakeToken, session_id: str
) -> None:
    gw1, _ = two_gateways
    ws = await open_ws(gw1.url)
    hello = Hello(token=make_token(), resume=ResumeRequest(session_id=session_id, resume_token="x"))
    await send(ws, hello)
    welcome = await receive(ws)
    assert isinstance(welcome, Welcome)
    assert (welcome.resumed, welcome.reason) == (False, "unknown")
    assert welcome.session_id != session_id
    await ws.close()


async def test_bye_ends_the_session_for_good_and_its_owed_messages_are_listed(
    two_gateways: tuple[Gateway, Gateway],
    bus: tuple[Client, SessionQueue],
    make_token: MakeToken,
) -> None:
    gw1, gw2 = two_gateways
    nc, queue = bus
    token = make_token("dave")
    ws, welcome = await welcomed(gw1.url, token)
    seq = await queue.put(
        Delivery(id="m-x", kind="message", session_id=welcome.session_id, user="dave", data={})
    )
    assert (await next_deliver(ws)).seq == seq  # sent, never acked
    await send(ws, Bye())
    assert (await closed_with(ws))[0] == CloseCode.NORMAL

    ws2, again = await resumed(gw2.url, token, welcome)
    assert (again.resumed, again.reason) == (False, "expired")
    assert again.session_id != welcome.session_id
    await ws2.close()

    owed = [m async for m in undelivered(nc, welcome.session_id)]
    assert [(m.id, m.seq, m.user, m.kind) for m in owed] == [("m-x", seq, "dave", "message")]
    assert owed[0].age_s >= 0


async def test_a_session_detached_longer_than_its_ttl_has_expired(
    settings: Settings, bus: tuple[Client, SessionQueue], make_token: MakeToken
) -> None:
    nc, _ = bus
    brief = settings.model_copy(update={"session_ttl_s": 1.0})
    async with Gateway(brief, name="gw-1", host="127.0.0.1", port=0) as gateway:
        token = make_token("erin")
        ws, welcome = await welcomed(gateway.url, token)
        await ws.close()
        # The store drops the record a TTL after the detach, leaving a tombstone.
        await until_state(nc, welcome.session_id, None, timeout=10)
        table = await SessionTable.open(nc.jetstream())
        assert isinstance(await table.lookup(welcome.session_id), Gone)
        ws2, again = await resumed(gateway.url, token, welcome)
        assert (again.resumed, again.reason) == (False, "expired")
        await ws2.close()


async def test_a_resume_elsewhere_takes_the_session_over_and_closes_the_old_one_4409(
    two_gateways: tuple[Gateway, Gateway],
    bus: tuple[Client, SessionQueue],
    make_token: MakeToken,
) -> None:
    gw1, gw2 = two_gateways
    nc, queue = bus
    token = make_token("frank")
    old, welcome = await welcomed(gw1.url, token)
    before = [await queue.put(message(welcome.session_id, n)) for n in range(3)]
    assert [(await next_deliver(old)).seq for _ in range(3)] == before  # in flight, unacked

    new, again = await resumed(gw2.url, token, welcome)  # both sockets are open here
    assert again.resumed
    code, _ = await closed_with(old)  # let go before the new one delivers anything
    assert code == CloseCode.SESSION_TAKEN_OVER
    after = await queue.put(message(welcome.session_id, 3))
    replay = [await next_deliver(new) for _ in range(4)]
    assert [d.seq for d in replay] == [*before, after]
    assert [d.redelivered for d in replay] == [True, True, True, False]
    await send(new, Ack(upto=after))
    await new.send('{"type": "ping"}')
    await receive(new)
    table = await SessionTable.open(nc.jetstream())
    found = await table.lookup(welcome.session_id)
    assert isinstance(found, Found)
    assert (found.record.gateway, found.record.state) == ("gw-2", SessionState.LIVE)
    await new.close()


async def test_a_resume_on_the_same_gateway_takes_over_too(
    two_gateways: tuple[Gateway, Gateway], make_token: MakeToken
) -> None:
    gw1, _ = two_gateways
    token = make_token("gina")
    old, welcome = await welcomed(gw1.url, token)
    new, again = await resumed(gw1.url, token, welcome)
    assert again.resumed
    assert (await closed_with(old))[0] == CloseCode.SESSION_TAKEN_OVER
    await new.close()


async def outcome(ws: ClientConnection) -> str:
    """`open` if the connection was welcomed and is still held, else its close code."""
    try:
        frame = await receive(ws)
    except ConnectionClosed:  # closed before any frame: the code says why
        return str(ws.close_code)
    assert isinstance(frame, Welcome), frame
    try:
        await asyncio.wait_for(ws.recv(), 1.0)
    except TimeoutError:
        return "open"
    except ConnectionClosed:
        return str(ws.close_code)
    raise AssertionError("nothing but a close was expected after the welcome")


async def test_racing_resumes_end_with_exactly_one_holder(
    two_gateways: tuple[Gateway, Gateway], bus: tuple[Client, SessionQueue], make_token: MakeToken
) -> None:
    gw1, gw2 = two_gateways
    nc, _ = bus
    token = make_token("hank")
    ws, welcome = await welcomed(gw1.url, token)
    await ws.close()
    table = await SessionTable.open(nc.jetstream())
    for _ in range(5):
        racers = [await open_ws(gw1.url), await open_ws(gw2.url)]
        await asyncio.gather(*(send(r, resume_hello(token, welcome)) for r in racers))
        outcomes = await asyncio.gather(*(outcome(r) for r in racers))
        assert sorted(outcomes) == [str(CloseCode.SESSION_TAKEN_OVER.value), "open"], outcomes
        winner = racers[outcomes.index("open")]
        found = await table.lookup(welcome.session_id)
        assert isinstance(found, Found)
        assert found.record.gateway == ("gw-1" if winner is racers[0] else "gw-2")
        await winner.close()


async def test_a_gateway_that_missed_a_takeover_finds_out_at_its_next_refresh(
    settings: Settings, make_token: MakeToken
) -> None:
    quick = settings.model_copy(update={"session_ttl_s": 2.0})  # records refreshed every 0.5 s
    async with (
        Gateway(quick, name="gw-1", host="127.0.0.1", port=0) as gw1,
        Gateway(quick, name="gw-2", host="127.0.0.1", port=0) as gw2,
    ):
        token = make_token("ivan")
        old, welcome = await welcomed(gw1.url, token)
        # gw-1 stops hearing release requests, as when it is cut off from NATS for a while.
        release = gw1._sessions._release_sub  # type: ignore[union-attr]
        await release.unsubscribe()
        new, again = await resumed(gw2.url, token, welcome)  # nobody answers the release
        assert again.resumed
        code, _ = await closed_with(old)  # gw-1's next compare-and-set fails: it lets go
        assert code == CloseCode.SESSION_TAKEN_OVER
        await new.close()
