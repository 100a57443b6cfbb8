"""The apps' sampler: a call served without trace context (straight at an app's socket, past
every sidecar) is not traced; calls follow their caller; background work is sampled."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from services.common.telemetry import CallsFromOutsideUntraced


def traced(flags: TraceFlags | None, kind: SpanKind) -> bool:
    """Whether a span of `kind` is exported, under a remote parent with `flags` (or none)."""
    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=CallsFromOutsideUntraced(ParentBased(ALWAYS_ON)))
    provider.add_span_processor(SimpleSpanProcessor(exported))
    context = None
    if flags is not None:
        parent = SpanContext(0xAB, 0xCD, is_remote=True, trace_flags=flags)
        context = trace.set_span_in_context(NonRecordingSpan(parent))
    with provider.get_tracer("test").start_as_current_span("s", context=context, kind=kind):
        pass
    provider.shutdown()
    return len(exported.get_finished_spans()) == 1


def test_a_call_from_outside_the_mesh_is_not_traced() -> None:
    assert not traced(None, SpanKind.SERVER)


def test_a_call_follows_its_callers_decision() -> None:
    assert traced(TraceFlags(TraceFlags.SAMPLED), SpanKind.SERVER)
    assert not traced(TraceFlags(TraceFlags.DEFAULT), SpanKind.SERVER)


def test_background_work_starts_traces() -> None:
    assert traced(None, SpanKind.INTERNAL)
    assert traced(None, SpanKind.CLIENT)
