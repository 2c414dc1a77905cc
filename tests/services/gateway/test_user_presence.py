"""User presence for backends: who is online on which sessions, and the changes as they
happen (join, leave; a takeover moves a session and is not a leave)."""

import asyncio
from collections.abc import Callable

from ackwire.bus.models import PresenceChange
from ackwire.gateway.server import Gateway
from ackwire.publisher import Publisher
from ackwire.wire.frames import Event, Subscribe, Subscribed
from support.client import closed_with, receive, resumed, send, welcomed

MakeToken = Callable[..., str]


async def test_a_backend_asks_whether_a_user_is_online_and_where(
    two_gateways: tuple[Gateway, Gateway], publisher: Publisher, make_token: MakeToken
) -> None:
    gw1, gw2 = two_gateways
    assert not (await publisher.presence("ann")).online
    phone, on_phone = await welcomed(gw1.url, make_token("ann"))
    laptop, on_laptop = await welcomed(gw2.url, make_token("ann"))
    presence = await publisher.presence("ann")
    assert presence.online
    where = {s.session_id: (s.gateway, s.connected) for s in presence.sessions}
    assert where == {on_phone.session_id: ("gw-1", True), on_laptop.session_id: ("gw-2", True)}
    await phone.close()
    await closed_with(phone)
    await laptop.close()
    await closed_with(laptop)
    presence = await publisher.presence("ann")
    assert not presence.online  # both still resumable, neither connected
    assert {s.session_id for s in presence.sessions} == {
        on_phone.session_id,
        on_laptop.session_id,
    }


async def test_presence_changes_as_they_happen(
    two_gateways: tuple[Gateway, Gateway], publisher: Publisher, make_token: MakeToken
) -> None:
    gw1, gw2 = two_gateways
    changes = await publisher.presence_changes()

    async def next_change() -> PresenceChange:
        return await asyncio.wait_for(anext(changes), 5)

    token = make_token("ben")
    ws, welcome = await welcomed(gw1.url, token)
    joined = await next_change()
    assert (joined.change, joined.user, joined.session_id, joined.gateway) == (
        "join",
        "ben",
        welcome.session_id,
        "gw-1",
    )
    ws2, _ = await resumed(gw2.url, token, welcome)  # a takeover: moved, not left
    moved = await next_change()
    assert (moved.change, moved.gateway) == ("join", "gw-2")
    await closed_with(ws)
    await ws2.close()
    left = await next_change()
    assert (left.change, left.gateway, left.session_id) == ("leave", "gw-2", welcome.session_id)
    await changes.close()


async def test_a_client_may_follow_a_users_presence_as_a_topic(
    gateway: Gateway, make_token: MakeToken
) -> None:
    watcher, _ = await welcomed(gateway.url, make_token("mum", topics=["presence.kid"]))
    await send(watcher, Subscribe(ref="p", topic="presence.kid"))
    assert await receive(watcher) == Subscribed(ref="p", topic="presence.kid")
    kid, welcome = await welcomed(gateway.url, make_token("kid"))
    event = await receive(watcher)
    assert isinstance(event, Event)
    assert event.data == {
        "change": "join",
        "gateway": "gw-test",
        "user": "kid",
        "session_id": welcome.session_id,
    }
    await kid.close()
    await watcher.close()
