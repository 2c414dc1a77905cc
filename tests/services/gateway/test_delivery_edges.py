"""Delivery at its edges, on real gateways over a real NATS: acks just before the end of a
connection, acks of messages a connection has not sent, what earlier connections sent,
a pump that fails, and a connection that lives no longer than its token."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.manager import JetStreamManager

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.session_queue import SessionQueue
from ackwire.gateway.delivery import DeliveryPump
from ackwire.gateway.server import Gateway
from ackwire.gateway.sessions import HeldSessions
from ackwire.publisher import Publisher
from ackwire.sessions.record import Found, SessionState
from ackwire.sessions.table import SessionTable
from ackwire.settings import Settings
from ackwire.wire.codes import CloseCode, ErrorCode
from ackwire.wire.frames import (
    Ack,
    Bye,
    Error,
    Ping,
    Pong,
    Refresh,
    Refreshed,
    Subscribe,
    Subscribed,
)
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
from support.logs import LogWatch

MakeToken = Callable[..., str]


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


async def owed(js: JetStreamContext, session_id: str) -> int:
    info = await js.stream_info(
        subjects.SESSIONS_STREAM, subjects_filter=subjects.session_subject(session_id)
    )
    return sum((info.state.subjects or {}).values())


@pytest.mark.parametrize("ending", ["bye", "close"])
async def test_an_ack_right_before_the_end_of_a_connection_is_delivered(
    gateway: Gateway,
    publisher: Publisher,
    make_token: MakeToken,
    logs: LogWatch,
    js: JetStreamContext,
    ending: str,
) -> None:
    """Hole 3: the natural ending of a client (ack, then bye in one burst, or ack, then
    close) loses nothing."""
    ws, welcome = await welcomed(gateway.url, make_token("ann"))
    sent = await publisher.send({"n": 1}, session=welcome.session_id)
    receipt = asyncio.create_task(publisher.receipt(sent.id))
    deliver = await next_deliver(ws)
    await send(ws, Ack(seq=deliver.seq))
    if ending == "bye":
        await send(ws, Bye())
        assert (await closed_with(ws))[0] == CloseCode.NORMAL
    else:
        await ws.close()
    async with asyncio.timeout(5):
        assert (await receipt).outcome == "delivered"
    assert await owed(js, welcome.session_id) == 0
    # The line follows the receipt: it is written once the receipt says what stands.
    await logs.wait_for("delivery.delivered", id=sent.id)


async def test_acks_flushed_after_a_resume_are_delivered_with_receipts(
    two_gateways: tuple[Gateway, Gateway],
    publisher: Publisher,
    make_token: MakeToken,
    logs: LogWatch,
    js: JetStreamContext,
) -> None:
    """Hole 4: a client acks what the old connection sent it right after the resumed
    `welcome`, before this connection has sent anything: each is delivered, logged
    and receipted."""
    gw1, gw2 = two_gateways
    token = make_token("bob")
    ws, welcome = await welcomed(gw1.url, token)
    sent = [await publisher.send({"n": n}, session=welcome.session_id) for n in range(3)]
    receipts = [asyncio.create_task(publisher.receipt(s.id)) for s in sent]
    seqs = [(await next_deliver(ws)).seq for _ in sent]
    ws.transport.abort()  # gone before it could ack
    ws2, again = await resumed(gw2.url, token, welcome)
    assert again.resumed
    for seq in seqs:  # the acks it queued while offline
        await send(ws2, Ack(seq=seq))
    async with asyncio.timeout(5):
        outcomes = [(await r).outcome for r in receipts]
    assert outcomes == ["delivered"] * 3
    for s in sent:  # each line follows its receipt
        await logs.wait_for("delivery.delivered", id=s.id)
    assert await owed(js, welcome.session_id) == 0
    await ws2.close()


async def test_what_an_earlier_connection_sent_is_redelivered_after_another_resume(
    two_gateways: tuple[Gateway, Gateway], publisher: Publisher, make_token: MakeToken
) -> None:
    """Hole 6: a connection holds 3 unacked messages; another resumes the session and
    drops at once; a third, resuming without `last_seq`, gets the 3 as redeliveries."""
    gw1, gw2 = two_gateways
    token = make_token("cat")
    ws, welcome = await welcomed(gw1.url, token)
    for n in range(3):
        await publisher.send({"n": n}, session=welcome.session_id)
    first = [await next_deliver(ws) for _ in range(3)]
    assert not any(d.redelivered for d in first)
    ws2 = await open_ws(gw2.url)
    await send(ws2, resume_hello(token, welcome))
    ws2.transport.abort()  # drops at once, before it is sent anything
    assert (await closed_with(ws))[0] == CloseCode.SESSION_TAKEN_OVER
    ws3, again = await resumed(gw1.url, token, welcome)
    assert again.resumed
    third = [await next_deliver(ws3) for _ in range(3)]
    assert [(d.seq, d.redelivered) for d in third] == [(d.seq, True) for d in first]
    await ws3.close()


async def test_a_bus_error_while_confirming_is_retried_not_fatal(
    gateway: Gateway,
    publisher: Publisher,
    make_token: MakeToken,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hole 7: an error nats-py raises untranslated (no responders, say, during a
    failover) must not kill the pump: the ack is confirmed once the store answers."""
    real = JetStreamManager.purge_stream
    failures = [NoRespondersError()]

    async def flaky(self: JetStreamManager, *args: Any, **kwargs: Any) -> bool:
        if failures:
            raise failures.pop()
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(JetStreamManager, "purge_stream", flaky)
    ws, welcome = await welcomed(gateway.url, make_token("dan"))
    sent = await publisher.send({"n": 1}, session=welcome.session_id)
    receipt = asyncio.create_task(publisher.receipt(sent.id))
    deliver = await next_deliver(ws)
    await send(ws, Ack(upto=deliver.seq))
    async with asyncio.timeout(5):
        assert (await receipt).outcome == "delivered"
    assert not failures
    await send(ws, Ping())
    assert isinstance(await receive(ws), Pong)  # still served
    await ws.close()


@pytest.mark.parametrize("broken", ["confirming", "sending"])
async def test_a_pump_that_fails_closes_1011_and_lets_go_of_the_session(
    gateway: Gateway,
    publisher: Publisher,
    make_token: MakeToken,
    monkeypatch: pytest.MonkeyPatch,
    logs: LogWatch,
    js: JetStreamContext,
    broken: str,
) -> None:
    """Hole 7: nothing may leave a connection half-alive, open with nothing delivered."""

    async def bug(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"a bug while {broken}")

    if broken == "confirming":
        monkeypatch.setattr(SessionQueue, "confirm", bug)
    else:
        monkeypatch.setattr(DeliveryPump, "_deliver", bug)
    ws, welcome = await welcomed(gateway.url, make_token("eve"))
    await publisher.send({"n": 1}, session=welcome.session_id)
    if broken == "confirming":
        deliver = await next_deliver(ws)
        await send(ws, Ack(seq=deliver.seq))
    assert (await closed_with(ws))[0] == CloseCode.INTERNAL_ERROR
    await logs.wait_for("session.let_go", state="detached")
    found = await (await SessionTable.open(js)).lookup(welcome.session_id)
    assert isinstance(found, Found)
    assert found.record.state is SessionState.DETACHED
    assert await owed(js, welcome.session_id) == 1  # not confirmed: still owed


async def test_a_connection_lives_no_longer_than_its_token(
    gateway: Gateway, make_token: MakeToken
) -> None:
    """Hole 10: closed 4401 once `exp` passes; the session stays resumable."""
    ws, welcome = await welcomed(gateway.url, make_token("fay", ttl_s=1))
    code, reason = await closed_with(ws, timeout=5)
    assert code == CloseCode.UNAUTHORIZED
    assert "expired" in reason
    ws2, again = await resumed(gateway.url, make_token("fay"), welcome)
    assert again.resumed
    await ws2.close()


async def test_a_refresh_moves_the_deadline_and_applies_the_new_topics_at_once(
    gateway: Gateway, make_token: MakeToken
) -> None:
    ws, _ = await welcomed(gateway.url, make_token("gus", ttl_s=2, topics=["chat.*"]))
    await send(ws, Subscribe(ref="c-1", topic="chat.a"))
    assert isinstance(await receive(ws), Subscribed)
    fresh = make_token("gus", ttl_s=60, topics=["news.*"])
    await send(ws, Refresh(ref="c-2", token=fresh))
    refreshed = await receive(ws)
    assert isinstance(refreshed, Refreshed)
    assert refreshed.ref == "c-2"
    assert refreshed.exp >= time.time() + 50
    dropped = await receive(ws)
    assert isinstance(dropped, Error)
    assert (dropped.code, dropped.topic) == (ErrorCode.FORBIDDEN_TOPIC, "chat.a")
    await asyncio.sleep(3)  # past the old token's `exp`: the deadline under test
    await send(ws, Ping())
    assert isinstance(await receive(ws), Pong)
    await ws.close()


@pytest.mark.parametrize("which", ["expired", "other_user", "garbage"])
async def test_a_bad_refresh_is_refused_and_the_old_token_stays(
    gateway: Gateway, make_token: MakeToken, which: str
) -> None:
    tokens = {
        "expired": make_token("hal", ttl_s=-60),
        "other_user": make_token("ivy"),
        "garbage": "not-a-jwt",
    }
    ws, _ = await welcomed(gateway.url, make_token("hal"))
    await send(ws, Refresh(ref="c-9", token=tokens[which]))
    error = await receive(ws)
    assert isinstance(error, Error)
    assert (error.code, error.ref) == (ErrorCode.BAD_TOKEN, "c-9")
    await send(ws, Ping())
    assert isinstance(await receive(ws), Pong)
    await ws.close()


async def test_a_slow_holder_is_waited_for_not_delivered_beside(
    settings: Settings, make_token: MakeToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hole 5: a release answered later than one request's timeout, by a gateway whose
    lease is alive, is waited for: the old connection is closed 4409 before the new
    one is welcomed, never both delivering at once."""
    answer_release = HeldSessions._on_release

    async def slowly(self: HeldSessions, msg: Msg) -> None:
        await asyncio.sleep(3)  # longer than a release request waits (2 s)
        await answer_release(self, msg)

    monkeypatch.setattr(HeldSessions, "_on_release", slowly)
    async with (
        Gateway(settings, name="gw-1", host="127.0.0.1", port=0) as gw1,
        Gateway(settings, name="gw-2", host="127.0.0.1", port=0) as gw2,
    ):
        token = make_token("kim")
        ws, welcome = await welcomed(gw1.url, token)
        taken = asyncio.create_task(closed_with(ws, timeout=15))
        resume = asyncio.create_task(resumed(gw2.url, token, welcome))
        done, _ = await asyncio.wait({taken, resume}, return_when=asyncio.FIRST_COMPLETED)
        assert taken in done, "the new connection was welcomed while the old one was open"
        assert taken.result()[0] == CloseCode.SESSION_TAKEN_OVER
        async with asyncio.timeout(15):
            ws2, again = await resume
        assert again.resumed
        await ws2.close()


async def test_an_ack_being_confirmed_when_the_gateway_drains_is_delivered(
    settings: Settings,
    publisher: Publisher,
    make_token: MakeToken,
    monkeypatch: pytest.MonkeyPatch,
    js: JetStreamContext,
) -> None:
    """Hole 3: a drain neither drops an ack nor cuts its confirmation in half; the client
    is closed 1001 once the store confirmed it."""
    purge = JetStreamManager.purge_stream
    purging = asyncio.Event()

    async def slow_purge(self: JetStreamManager, *args: Any, **kwargs: Any) -> bool:
        purging.set()
        await asyncio.sleep(0.5)  # the store is slow to answer: the drain starts meanwhile
        return await purge(self, *args, **kwargs)

    monkeypatch.setattr(JetStreamManager, "purge_stream", slow_purge)
    gateway = Gateway(settings, name="gw-draining", host="127.0.0.1", port=0)
    await gateway.start()
    ws, welcome = await welcomed(gateway.url, make_token("lou"))
    sent = await publisher.send({"n": 1}, session=welcome.session_id)
    receipt = asyncio.create_task(publisher.receipt(sent.id))
    await send(ws, Ack(upto=(await next_deliver(ws)).seq))
    await asyncio.wait_for(purging.wait(), 5)
    draining = asyncio.create_task(gateway.drain())
    assert (await closed_with(ws))[0] == CloseCode.GOING_AWAY
    async with asyncio.timeout(5):
        assert (await receipt).outcome == "delivered"
        await draining
    assert await owed(js, welcome.session_id) == 0
