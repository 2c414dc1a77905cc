import asyncio
import urllib.error
import urllib.request

from websockets.datastructures import Headers
from websockets.http11 import Request

from ackwire.probes import Probes, serve_probes


def status_of(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_readyz_says_why_a_service_is_not_ready() -> None:
    why: list[str | None] = ["not connected to NATS"]
    server = await serve_probes("127.0.0.1", 0, Probes(lambda: why[0]))
    port = next(iter(server.sockets)).getsockname()[1]
    try:
        status, body = await asyncio.to_thread(status_of, f"http://127.0.0.1:{port}/readyz")
        assert (status, body) == (503, "not ready: not connected to NATS\n")
        why[0] = None
        assert await asyncio.to_thread(status_of, f"http://127.0.0.1:{port}/readyz") == (
            200,
            "ready\n",
        )
        assert (await asyncio.to_thread(status_of, f"http://127.0.0.1:{port}/healthz"))[0] == 200
        assert (await asyncio.to_thread(status_of, f"http://127.0.0.1:{port}/"))[0] == 404
    finally:
        server.close()
        await server.wait_closed()


def test_an_upgrade_goes_through_unless_it_is_refused_then_503_says_why() -> None:
    refusing: list[str | None] = [None]
    probes = Probes(lambda: None, refusing_upgrades=lambda: refusing[0])
    upgrade = Request("/", Headers({"Upgrade": "websocket", "Connection": "Upgrade"}))
    assert probes.respond(None, upgrade) is None  # type: ignore[arg-type]
    refusing[0] = "draining"
    refused = probes.respond(None, upgrade)  # type: ignore[arg-type]
    assert refused is not None
    assert (refused.status_code, refused.body) == (503, b"not accepting connections: draining\n")
