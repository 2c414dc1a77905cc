"""The gateway's port answers plain HTTP: liveness, readiness, metrics."""

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from websockets.exceptions import InvalidStatus
from websockets.frames import Close, Opcode

from ackwire.gateway.server import Gateway
from ackwire.settings import Settings
from ackwire.wire.frames import Hello
from support.client import SilentClient, open_ws, welcomed


def http_get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def base(gateway: Gateway) -> str:
    return gateway.url.replace("ws://", "http://")


async def test_healthz_and_readyz_answer_200(gateway: Gateway) -> None:
    assert (await asyncio.to_thread(http_get, base(gateway) + "/healthz"))[0] == 200
    assert (await asyncio.to_thread(http_get, base(gateway) + "/readyz"))[0] == 200


async def test_metrics_count_connections(gateway: Gateway, make_token: object) -> None:
    ws, _ = await welcomed(gateway.url, make_token())  # type: ignore[operator]
    status, content_type, body = await asyncio.to_thread(http_get, base(gateway) + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    value = next(
        float(line.split()[1])
        for line in body.splitlines()
        if line.startswith("ackwire_gateway_connections ")
    )
    assert value >= 1
    await ws.close()


async def test_an_unknown_path_is_404(gateway: Gateway) -> None:
    assert (await asyncio.to_thread(http_get, base(gateway) + "/nope"))[0] == 404


async def test_a_draining_gateway_reports_not_ready(gateway: Gateway) -> None:
    assert gateway.readiness() is None
    await gateway.drain()
    assert gateway.readiness() == "draining"


async def test_a_draining_gateway_answers_503_to_new_upgrades_until_its_clients_are_closed(
    settings: Settings, make_token: Callable[..., str]
) -> None:
    gateway = Gateway(settings, name="gw-drain", host="127.0.0.1", port=0)
    await gateway.start()
    url, http = gateway.url, base(gateway)
    # A client that answers the gateway's close only when the test says: the drain waits.
    client = await SilentClient.connect(url, Hello(token=make_token()))
    draining = asyncio.create_task(gateway.drain())
    try:
        async with asyncio.timeout(5):
            while (event := await client.next_event()) is not None:
                if event.opcode is Opcode.CLOSE:
                    break
        assert event is not None
        assert Close.parse(event.data).code == 1001

        # Mid-drain: not ready, and a new upgrade is answered 503 rather than refused.
        status, _, body = await asyncio.to_thread(http_get, http + "/readyz")
        assert (status, body) == (503, "not ready: draining\n")
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(url)
        assert refused.value.response.status_code == 503
        assert b"draining" in refused.value.response.body
        assert not draining.done()

        client.flush()  # the reply to the close; then hang up, as a client does
    finally:
        client.close()
        await asyncio.wait_for(draining, 5)  # well within websockets' 10 s close timeout
    with pytest.raises(ConnectionRefusedError):  # drained: the port is closed
        await open_ws(url)
