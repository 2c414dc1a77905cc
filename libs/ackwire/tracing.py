"""A job's trace: W3C trace context from the client (or the gateway) to the node and back.

The trace id is the job's `trace_id` in every log line; its spans go to an
OpenTelemetry collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the SDK reads
its standard `OTEL_*` variables), and nowhere otherwise. With no tracer provider
set, `span` does not go through OpenTelemetry at all (its no-op spans cost some
16 µs each, on every job's path): it hands on its parent's context, as the API's
no-op span would. The context travels as a `traceparent`:

- the client's `submit` may carry one (docs/protocol.md, an extension); the
  gateway's span is its child, or a new trace's root;
- the job's message carries the gateway span's in a NATS header; the node's
  attempt span is its child, and so is the scheduler's timer span (a job
  checked past its pending timeout);
- the job record keeps it, and the job's terminal delivery carries it, for the
  gateway's span when the client's ack is confirmed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from ackwire.wire.tracecontext import TRACEPARENT, new_traceparent

_tracer = trace.get_tracer("ackwire")


def span(
    name: str, parent: str | None, *, trace_id: str | None = None, **attributes: str | int
) -> AbstractContextManager[str]:
    """A span named `name`, child of the `traceparent` `parent`, or with none (a client or
    an older service sent none) a root in `trace_id`'s trace, or in a new one; yields the
    span's own `traceparent`, to hand on. With no tracer provider set (no exporter
    configured) it records nothing and yields its parent's context."""
    parent = parent or new_traceparent(trace_id)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return nullcontext(parent)
    return _recorded(name, parent, attributes)


@contextmanager
def _recorded(name: str, parent: str, attributes: dict[str, str | int]) -> Iterator[str]:
    match = TRACEPARENT.fullmatch(parent)
    assert match is not None, parent  # checked where it came in
    remote = SpanContext(
        trace_id=int(match.group(1), 16),
        span_id=int(match.group(2), 16),
        is_remote=True,
        trace_flags=TraceFlags(int(match.group(3), 16)),
    )
    context = trace.set_span_in_context(NonRecordingSpan(remote))
    with _tracer.start_as_current_span(name, context=context, attributes=attributes) as current:
        own = current.get_span_context()
        yield f"00-{own.trace_id:032x}-{own.span_id:016x}-{int(own.trace_flags):02x}"


def export_if_configured(service: str) -> None:
    """Send this process's spans to the OTLP endpoint of `OTEL_EXPORTER_OTLP_ENDPOINT`."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"ackwire-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
