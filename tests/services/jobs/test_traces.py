"""One trace from the client through gateway, node and scheduler and back to the `deliver`:
in every service's log lines and spans (an in-process span exporter), and exported by
OTLP from each service's own process."""

from collections.abc import Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ackwire.bus.embedded import EmbeddedNats
from ackwire.wire.codes import ErrorCode
from ackwire.wire.frames import Accepted, Error, Submit
from support.logs import LogWatch
from support.otlp import OtlpReceiver

from .conftest import Stack
from .test_jobs import connect
from .test_service_metrics import running_services

MakeToken = Callable[..., str]
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span the services end during the test (the provider is set once a process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


async def test_the_clients_trace_reaches_every_service_and_comes_back_on_the_deliver(
    stack: Stack, make_token: MakeToken, logs: LogWatch, spans: InMemorySpanExporter
) -> None:
    client = await connect(stack.gateway.url, make_token())
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    accepted = await client.submit(
        Submit(ref="c-1", kind="echo", payload={}, traceparent=traceparent)
    )
    assert isinstance(accepted, Accepted)
    [result] = await client.until_terminal(accepted.job_id)
    assert result.trace_id == CLIENT_TRACE
    await logs.wait_for("delivery.delivered", job_id=accepted.job_id)

    story = [e for e in logs.events if e.get("trace_id") == CLIENT_TRACE]
    where = {
        (e["event"], next(s for s in ("gateway", "node", "scheduler") if s in e)) for e in story
    }
    assert {
        ("job.accepted", "gateway"),
        ("job.attempt_started", "node"),
        ("job.queued_for_session", "node"),
        ("delivery.delivered", "gateway"),
    } <= where

    ended = {
        s.name: s for s in spans.get_finished_spans() if s.context.trace_id == int(CLIENT_TRACE, 16)
    }
    assert {"ackwire.submit", "ackwire.attempt", "ackwire.delivered"} <= set(ended)
    submit = ended["ackwire.submit"]
    assert submit.parent is not None
    assert submit.parent.span_id == int(CLIENT_SPAN, 16)  # a child of the client's span
    for name in ("ackwire.attempt", "ackwire.delivered"):
        parent = ended[name].parent
        assert parent is not None
        assert parent.span_id == submit.context.span_id, name  # across NATS, by header
    assert ended["ackwire.attempt"].attributes == {"job_id": accepted.job_id, "delivery": 1}
    await client.ws.close()


async def test_without_a_traceparent_the_gateway_starts_the_trace(
    stack: Stack, make_token: MakeToken, logs: LogWatch, spans: InMemorySpanExporter
) -> None:
    client = await connect(stack.gateway.url, make_token())
    accepted = await client.submit(Submit(ref="c-1", kind="echo", payload={}))
    assert isinstance(accepted, Accepted)
    [result] = await client.until_terminal(accepted.job_id)
    assert result.trace_id is not None
    [submit] = [s for s in spans.get_finished_spans() if s.name == "ackwire.submit"]
    assert f"{submit.context.trace_id:032x}" == result.trace_id
    assert (await logs.wait_for("job.accepted", job_id=accepted.job_id))[
        "trace_id"
    ] == result.trace_id
    await client.ws.close()


async def test_a_malformed_traceparent_is_a_bad_frame(stack: Stack, make_token: MakeToken) -> None:
    client = await connect(stack.gateway.url, make_token())
    await client.ws.send(
        '{"type": "submit", "ref": "c-1", "kind": "echo", "payload": {}, "traceparent": "nope"}'
    )
    answer = await client.answer(Submit(ref="c-1", kind="echo", payload={}))
    assert isinstance(answer, Error)
    assert answer.code is ErrorCode.BAD_FRAME
    assert "traceparent" in answer.message
    await client.ws.close()


async def test_with_an_otlp_endpoint_every_service_exports_its_spans_of_the_trace(
    nats_server: EmbeddedNats, make_token: MakeToken
) -> None:
    """Each service a real process with `OTEL_EXPORTER_OTLP_ENDPOINT` set: a small OTLP
    receiver gets the gateway's, the node's and the scheduler's spans of the client's
    trace, each under its service's name (the scheduler's: the timer of a job that runs
    past its pending timeout)."""
    receiver = OtlpReceiver()
    await receiver.start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: export at once, not after 5 s
        "ACKWIRE_PENDING_TIMEOUT_S": "1",
    }
    try:
        async with running_services(nats_server.url, env) as services:
            client = await connect(f"ws://127.0.0.1:{services.gateway.port}", make_token())
            traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
            accepted = await client.submit(
                Submit(ref="c-1", kind="sleep", payload={"seconds": 2}, traceparent=traceparent)
            )
            assert isinstance(accepted, Accepted)
            await client.until_terminal(accepted.job_id)
            await receiver.until(
                ("ackwire-gateway", "ackwire.submit", CLIENT_TRACE),
                ("ackwire-node", "ackwire.attempt", CLIENT_TRACE),
                ("ackwire-scheduler", "ackwire.timer", CLIENT_TRACE),
                ("ackwire-gateway", "ackwire.delivered", CLIENT_TRACE),
                timeout=15,
            )
            await client.ws.close()
    finally:
        await receiver.stop()
