"""Presence on the bus: a session's record says which connection holds it, a gateway's
lease says whether that connection can still be alive. No zombies: a socket that dies
is unregistered at once, a draining gateway leaves nothing live behind."""

import asyncio
from collections.abc import Callable
from typing import Any

import nats
import pytest
import stamina
from nats.js.errors import KeyNotFoundError

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats
from ackwire.errors import BusUnavailableError
from ackwire.gateway.server import Gateway
from ackwire.sessions.overview import SessionSummary, session_summaries
from ackwire.sessions.record import Found, SessionRecord, SessionState
from ackwire.sessions.table import SessionTable
from ackwire.settings import Settings
from ackwire.wire.codes import CloseCode
from ackwire.wire.frames import Hello
from support.client import closed_with, open_ws, send, welcomed
from support.logs import LogWatch


async def summary_of(url: str, session_id: str) -> SessionSummary:
    nc = await nats.connect(url)
    try:
        found = [s for s in await session_summaries(nc) if s.session_id == session_id]
    finally:
        await nc.close()
    assert len(found) == 1, found
    return found[0]


async def test_a_connection_is_live_while_open_and_detached_the_moment_its_socket_dies(
    nats_server: EmbeddedNats, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().key_value(subjects.SESSIONS_BUCKET)
    ws, welcome = await welcomed(gateway.url, make_token("alice_1"))
    watcher = await kv.watch(subjects.session_key(welcome.session_id))
    live = SessionRecord.model_validate_json((await watcher.updates(timeout=5)).value)
    assert (live.state, live.user, live.gateway) == (SessionState.LIVE, "alice_1", "gw-test")
    assert live.resume_hash != welcome.resume_token  # only a hash is stored
    summary = await summary_of(nats_server.url, welcome.session_id)
    assert summary.connected
    assert summary.gateway == "gw-test"

    ws.transport.abort()  # the socket dies without a close handshake
    while (entry := await watcher.updates(timeout=5)) is None:
        pass
    detached = SessionRecord.model_validate_json(entry.value)
    assert detached.state is SessionState.DETACHED
    assert not (await summary_of(nats_server.url, welcome.session_id)).connected
    await watcher.stop()
    await nc.close()


async def test_draining_closes_clients_1001_and_leaves_nothing_live(
    nats_server: EmbeddedNats, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    clients = [await welcomed(gateway.url, make_token(f"u{i}")) for i in range(3)]
    await gateway.drain()
    codes = await asyncio.gather(*(closed_with(ws) for ws, _ in clients))
    assert [code for code, _ in codes] == [1001, 1001, 1001]
    nc = await nats.connect(nats_server.url)
    summaries = await session_summaries(nc)
    leases = await nc.jetstream().key_value(subjects.GATEWAYS_BUCKET)
    with pytest.raises(KeyNotFoundError):  # the gateway said goodbye
        await leases.get(subjects.gateway_key("gw-test"))
    await nc.close()
    assert len(summaries) == 3
    assert all(s.state is SessionState.DETACHED and not s.connected for s in summaries)


async def test_without_a_bus_that_confirms_there_is_no_welcome(
    nats_server: EmbeddedNats, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    await nats_server.stop()
    assert gateway.readiness() == "not connected to NATS"
    ws = await open_ws(gateway.url)
    await send(ws, Hello(token=make_token()))
    code, reason = await closed_with(ws, timeout=15)
    assert code == CloseCode.INTERNAL_ERROR
    assert "bus unavailable" in reason


async def test_a_detach_the_store_did_not_take_is_retried(
    settings: Settings,
    make_token: Callable[..., str],
    logs: LogWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hole 9: a session whose detach failed must not look online until its TTL."""
    write = SessionTable.replace
    store_down = True

    async def flaky(self: SessionTable, *args: Any, **kwargs: Any) -> int:
        if store_down:
            raise BusUnavailableError("the store is away")
        return await write(self, *args, **kwargs)

    stamina.set_testing(True, attempts=2)  # the detach's own retries, without their waits
    try:
        quick = settings.model_copy(update={"session_ttl_s": 2.0})  # a refresh every 0.5 s
        async with Gateway(quick, name="gw-1", host="127.0.0.1", port=0) as gateway:
            ws, welcome = await welcomed(gateway.url, make_token("jay"))
            monkeypatch.setattr(SessionTable, "replace", flaky)
            await ws.close()
            await logs.wait_for("session.detach_failed")
            store_down = False
            await logs.wait_for("session.let_go", state="detached", timeout=5)
            nc = await nats.connect(settings.nats_url)
            found = await (await SessionTable.open(nc.jetstream())).lookup(welcome.session_id)
            await nc.close()
            assert isinstance(found, Found)
            assert found.record.state is SessionState.DETACHED
    finally:
        stamina.set_testing(False)
