"""The gateway's port answers plain HTTP: liveness, readiness, metrics."""

import asyncio
import urllib.error
import urllib.request

from ackwire.gateway.server import Gateway
from support.client import welcomed


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
