"""A small OTLP/HTTP trace receiver: what an OpenTelemetry collector would be sent."""

from __future__ import annotations

import asyncio
import contextlib

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class OtlpReceiver:
    """Answers `POST /v1/traces` with 200 and keeps every span, with its service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        """(service.name, span name, trace id in hex), in the order received."""
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def until(self, *wanted: tuple[str, str, str], timeout: float) -> None:
        """Until every one of `wanted` was received (bounded)."""
        async with asyncio.timeout(timeout):
            while not set(wanted) <= set(self.spans):
                self._changed.clear()
                await self._changed.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                headers = dict(
                    line.split(":", 1) for line in head.decode().split("\r\n")[1:] if ":" in line
                )
                length = int({k.lower(): v for k, v in headers.items()}["content-length"])
                self._keep(await reader.readexactly(length))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                    b"Content-Length: 0\r\n\r\n"
                )
                await writer.drain()
        writer.close()

    def _keep(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((service, span.name, span.trace_id.hex()))
        self._changed.set()
