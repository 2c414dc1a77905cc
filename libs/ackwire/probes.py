"""Liveness, readiness and Prometheus metrics over plain HTTP.

Every service answers `GET /healthz`, `GET /readyz` and `GET /metrics`. The
gateway answers them on its WebSocket port (websockets lets a request that is
not an upgrade be answered in `process_request`); the scheduler and nodes run
the same responder on `ACKWIRE_HTTP_PORT`. No extra web framework is needed.
A service may answer more paths (the gateway's demo page) through `pages`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from http import HTTPStatus

import prometheus_client
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

Readiness = Callable[[], str | None]
"""Returns `None` when ready, else why not (shown in the 503 body)."""

Pages = Callable[[str, str], Response | None]
"""Answers a GET of a path (with its query string, no `?`), or `None`: not one of its own."""


def _no_reason() -> None:
    return None


class Probes:
    def __init__(
        self,
        readiness: Readiness,
        *,
        refusing_upgrades: Readiness = _no_reason,
        pages: Pages | None = None,
    ) -> None:
        """`refusing_upgrades` says why a WebSocket upgrade is answered 503 now (a gateway
        draining), or `None` to let it through; `pages` answers the paths beyond the probes."""
        self._readiness = readiness
        self._refusing_upgrades = refusing_upgrades
        self._pages = pages

    def respond(self, _connection: ServerConnection, request: Request) -> Response | None:
        """Answer a plain HTTP request, or a refused upgrade; `None` lets an upgrade proceed."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return self._answer_upgrade()
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            return http_response(HTTPStatus.OK, b"ok\n")
        if path == "/readyz":
            why_not = self._readiness()
            if why_not is None:
                return http_response(HTTPStatus.OK, b"ready\n")
            return http_response(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {why_not}\n".encode())
        if path == "/metrics":
            return http_response(
                HTTPStatus.OK,
                prometheus_client.generate_latest(),
                prometheus_client.CONTENT_TYPE_LATEST,
            )
        page = None if self._pages is None else self._pages(path, query)
        return http_response(HTTPStatus.NOT_FOUND, b"not found\n") if page is None else page

    def _answer_upgrade(self) -> Response | None:
        refused = self._refusing_upgrades()
        if refused is None:
            return None
        return http_response(
            HTTPStatus.SERVICE_UNAVAILABLE, f"not accepting connections: {refused}\n".encode()
        )


def http_response(
    status: HTTPStatus,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra_headers: Sequence[tuple[str, str]] = (),
) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *extra_headers,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


async def serve_probes(host: str, port: int, probes: Probes) -> Server:
    """An HTTP-only server for services that hold no WebSockets (scheduler, nodes)."""

    async def refuse_upgrade(connection: ServerConnection, request: Request) -> Response:
        return probes.respond(connection, request) or http_response(
            HTTPStatus.NOT_FOUND, b"this port serves health and metrics only\n"
        )

    async def unreachable(_connection: ServerConnection) -> None:  # every request is answered above
        return None

    return await serve(unreachable, host, port, process_request=refuse_upgrade)
