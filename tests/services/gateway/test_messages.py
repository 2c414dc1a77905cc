"""Messages from backend services to users (the publisher API), on two gateways over one
real NATS: to every session of a user, to one session, acked like job results."""

import asyncio
from collections.abc import Callable

import pytest

from ackwire.gateway.server import Gateway
from ackwire.publisher import NoRecipientError, Publisher
from ackwire.wire.frames import Ack, Bye
from support.client import closed_with, next_deliver, resumed, send, welcomed

MakeToken = Callable[..., str]


async def test_a_message_to_a_user_reaches_each_of_their_sessions_on_two_gateways(
    two_gateways: tuple[Gateway, Gateway], publisher: Publisher, make_token: MakeToken
) -> None:
    gw1, gw2 = two_gateways
    phone, on_phone = await welcomed(gw1.url, make_token("alice"))
    laptop, on_laptop = await welcomed(gw2.url, make_token("alice"))
    other, _ = await welcomed(gw1.url, make_token("bob"))
    sent = await publisher.send({"text": "hi"}, user="alice")
    assert set(sent.sessions) == {on_phone.session_id, on_laptop.session_id}
    for ws in (phone, laptop):
        deliver = await next_deliver(ws)
        assert (deliver.id, deliver.kind, deliver.data) == (sent.id, "message", {"text": "hi"})
        await send(ws, Ack(seq=deliver.seq))
    for ws in (phone, laptop, other):
        await ws.close()


async def test_a_message_to_one_session_and_to_a_detached_one_that_resumes(
    two_gateways: tuple[Gateway, Gateway], publisher: Publisher, make_token: MakeToken
) -> None:
    gw1, gw2 = two_gateways
    token = make_token("carol")
    ws, welcome = await welcomed(gw1.url, token)
    await ws.close()  # detached: still resumable, so still addressed
    sent = await publisher.send({"n": 1}, session=welcome.session_id)
    assert sent.sessions == (welcome.session_id,)
    ws2, again = await resumed(gw2.url, token, welcome)
    assert again.resumed
    deliver = await next_deliver(ws2)
    assert (deliver.id, deliver.redelivered) == (sent.id, False)
    await ws2.close()


async def test_nobody_to_send_to_is_an_error(
    gateway: Gateway, publisher: Publisher, make_token: MakeToken
) -> None:
    with pytest.raises(NoRecipientError):
        await publisher.send({}, user="nobody")
    with pytest.raises(NoRecipientError):
        await publisher.send({}, session="s-" + "x" * 22)
    ws, welcome = await welcomed(gateway.url, make_token("dora"))
    await send(ws, Bye())
    await closed_with(ws)
    with pytest.raises(NoRecipientError):  # ended: not resumable, not addressed
        await publisher.send({}, user="dora")
    with pytest.raises(ValueError, match="exactly one"):
        await publisher.send({}, user="dora", session=welcome.session_id)


async def test_a_retried_send_with_the_same_id_is_stored_once(
    gateway: Gateway, publisher: Publisher, make_token: MakeToken
) -> None:
    ws, _ = await welcomed(gateway.url, make_token("erik"))
    first = await publisher.send({"n": 1}, user="erik", message_id="m-retry-1")
    again = await publisher.send({"n": 1}, user="erik", message_id="m-retry-1")
    assert first.id == again.id == "m-retry-1"
    deliver = await next_deliver(ws)
    await send(ws, Ack(seq=deliver.seq))
    await ws.send('{"type": "ping"}')
    frame = await ws.recv()
    assert '"pong"' in str(frame)  # and no second deliver came first
    await ws.close()


async def test_the_senders_receipt_comes_only_after_the_clients_ack(
    two_gateways: tuple[Gateway, Gateway], publisher: Publisher, make_token: MakeToken
) -> None:
    gw1, gw2 = two_gateways
    token = make_token("fay")
    ws, welcome = await welcomed(gw1.url, token)
    sent = await publisher.send({"text": "hi"}, user="fay")
    waiting = asyncio.create_task(publisher.receipt(sent.id))
    deliver = await next_deliver(ws)
    ws.transport.abort()  # gone before acking: no receipt
    ws2, _ = await resumed(gw2.url, token, welcome)
    again = await next_deliver(ws2)
    assert (again.id, again.redelivered) == (deliver.id, True)
    assert not waiting.done()  # received twice, acked never: not delivered yet
    await send(ws2, Ack(seq=again.seq))
    async with asyncio.timeout(5):
        receipt = await waiting
    assert (receipt.message_id, receipt.outcome) == (sent.id, "delivered")
    assert (receipt.session_id, receipt.user, receipt.seq) == (welcome.session_id, "fay", again.seq)
    await ws2.close()


async def test_a_receipt_is_never_issued_for_a_message_nobody_acked(
    gateway: Gateway, publisher: Publisher, make_token: MakeToken
) -> None:
    ws, _ = await welcomed(gateway.url, make_token("gil"))
    sent = await publisher.send({}, user="gil")
    await next_deliver(ws)
    await ws.close()  # closed without an ack
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.5):
            await publisher.receipt(sent.id)


async def test_a_producer_follows_the_receipts_of_its_messages(
    gateway: Gateway, publisher: Publisher, make_token: MakeToken
) -> None:
    receipts = await publisher.receipts()
    ws, _ = await welcomed(gateway.url, make_token("ida"))
    sent = [await publisher.send({"n": n}, user="ida") for n in range(3)]
    delivers = [await next_deliver(ws) for _ in sent]
    await send(ws, Ack(upto=delivers[-1].seq))
    async with asyncio.timeout(5):
        got = [await anext(receipts) for _ in sent]
    assert sorted(r.message_id for r in got) == sorted(s.id for s in sent)
    assert {r.outcome for r in got} == {"delivered"}
    await receipts.close()
    await ws.close()
