"""`span`: a real span when a tracer provider is set, and no OpenTelemetry at all when not.

The global provider can be set only once a process (tests/services/jobs/test_traces.py
sets one), so these tests hand `span` a provider, or none, through monkeypatch."""

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ackwire import tracing
from ackwire.tracing import span
from ackwire.wire.tracecontext import trace_id_of, traceparent_problem

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


class NoTracer:
    def start_as_current_span(self, *_args: object, **_kwargs: object) -> None:
        raise AssertionError("OpenTelemetry was called with no provider set")


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    monkeypatch.setattr(tracing, "_tracer", NoTracer())


@pytest.mark.usefixtures("no_provider")
def test_with_no_provider_a_span_hands_on_its_parent() -> None:
    with span("ackwire.submit", PARENT, job_id="j-1") as context:
        assert context == PARENT


@pytest.mark.usefixtures("no_provider")
def test_with_no_provider_and_no_parent_a_span_is_in_the_trace_it_names() -> None:
    with span("ackwire.receipt", None, trace_id=TRACE) as context:
        assert traceparent_problem(context) is None
        assert trace_id_of(context) == TRACE
    with span("ackwire.receipt", None, trace_id="not a trace id") as context:
        assert traceparent_problem(context) is None
        assert trace_id_of(context) != TRACE


def test_with_a_provider_a_span_is_recorded_as_the_parent_s_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("ackwire"))

    with span("ackwire.submit", PARENT, job_id="j-1") as context:
        assert trace_id_of(context) == TRACE
        assert context != PARENT

    [recorded] = exporter.get_finished_spans()
    assert recorded.name == "ackwire.submit"
    assert recorded.parent is not None
    assert recorded.parent.span_id == 0x00F067AA0BA902B7
    assert recorded.attributes == {"job_id": "j-1"}
    assert context == f"00-{TRACE}-{recorded.context.span_id:016x}-01"
