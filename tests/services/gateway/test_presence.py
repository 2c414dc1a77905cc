"""The gateway publishes who is connected where, and removes a connection the moment it ends."""

import asyncio
from collections.abc import Callable

import nats
from nats.js.kv import KV_DEL

from ackwire.bus import subjects
from ackwire.bus.embedded import EmbeddedNats
from ackwire.bus.models import PresenceRecord
from ackwire.gateway.server import Gateway
from ackwire.wire.codes import CloseCode
from ackwire.wire.frames import Hello
from support.client import closed_with, open_ws, send, welcomed


async def test_a_connection_is_present_while_open_and_gone_when_closed(
    nats_server: EmbeddedNats, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().key_value(subjects.PRESENCE_BUCKET)
    watcher = await kv.watch("alice_1.*")
    assert await watcher.updates(timeout=5) is None  # nothing there yet

    ws, welcome = await welcomed(gateway.url, make_token("alice_1"))
    entry = await watcher.updates(timeout=5)
    record = PresenceRecord.model_validate_json(entry.value)
    assert entry.key == f"alice_1.{welcome.session_id}"
    assert record.gateway == "gw-test"
    assert record.session_id == welcome.session_id
    assert record.user == "alice_1"

    ws.transport.abort()  # the socket dies without a close handshake
    gone = await watcher.updates(timeout=5)
    assert gone.key == entry.key
    assert gone.operation == KV_DEL
    await nc.close()


async def test_draining_closes_clients_1001_and_clears_their_presence(
    nats_server: EmbeddedNats, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    clients = [await welcomed(gateway.url, make_token(f"u{i}")) for i in range(3)]
    await gateway.drain()
    codes = await asyncio.gather(*(closed_with(ws) for ws, _ in clients))
    assert [code for code, _ in codes] == [1001, 1001, 1001]
    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().key_value(subjects.PRESENCE_BUCKET)
    watcher = await kv.watchall(ignore_deletes=True)
    assert await watcher.updates(timeout=5) is None  # no live connection is left behind
    await nc.close()


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
