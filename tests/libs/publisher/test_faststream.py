"""The publisher API inside a FastStream app: a handler sends on the broker's connection."""

from collections.abc import Callable

from faststream.nats import NatsBroker

from ackwire.bus.embedded import EmbeddedNats
from ackwire.gateway.server import Gateway
from ackwire.publisher import Publisher
from support.client import next_deliver, welcomed


async def test_a_faststream_handler_sends_a_message_to_a_user(
    nats_server: EmbeddedNats, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    broker = NatsBroker(nats_server.url)

    @broker.subscriber("orders.shipped")
    async def on_shipped(order: dict[str, str]) -> None:
        await Publisher(broker.connection).send({"order": order["id"]}, user=order["user"])

    ws, _ = await welcomed(gateway.url, make_token("olga"))
    async with broker:
        await broker.start()
        await broker.publish({"id": "o-7", "user": "olga"}, "orders.shipped")
        deliver = await next_deliver(ws)
    assert (deliver.kind, deliver.data) == ("message", {"order": "o-7"})
    await ws.close()
