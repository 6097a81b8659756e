"""The writer's receive span without the span: `unsampled_child_context` must give what `start_span` under the
message's extracted context gives whenever it answers at all, and leave to the SDK every case it cannot be sure of."""

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NoOpTracer, Span, SpanKind

from fleetflow.runtime import telemetry

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
UNSAMPLED = {"traceparent": f"00-{TRACE}-{SPAN}-00", "Nats-Msg-Id": "f/d/1"}
DROPPING = [ParentBased(ALWAYS_OFF), DEFAULT_ON, ParentBasedTraceIdRatio(0.5)]


class _Custom(ParentBased):
    """A parent-based sampler that decides otherwise: its description alone must not be trusted."""

    def should_sample(self, *args, **kwargs):  # type: ignore[no-untyped-def,unused-ignore]
        return ALWAYS_ON.should_sample(*args, **kwargs)


def _started(provider: TracerProvider, headers: dict[str, str]) -> Span:
    return provider.get_tracer("t").start_span("process x", telemetry.extract(headers), SpanKind.CONSUMER)


@pytest.mark.parametrize("sampler", DROPPING, ids=lambda s: s.get_description()[:40])
@pytest.mark.parametrize("flags", ["00", "02", "fe"])
def test_an_unsampled_parent_gives_the_context_of_the_span_the_sdk_would_drop(sampler: Sampler, flags: str) -> None:
    provider = TracerProvider(sampler=sampler)
    headers = {**UNSAMPLED, "traceparent": f"00-{TRACE}-{SPAN}-{flags}"}
    span = _started(provider, headers)
    assert not span.is_recording()
    built = telemetry.unsampled_child_context(headers, provider.get_tracer("t"))
    assert built is not None
    expected = span.get_span_context()
    assert (built.trace_id, built.trace_flags, built.trace_state, built.is_remote) == (
        expected.trace_id, expected.trace_flags, expected.trace_state, expected.is_remote)  # fmt: skip
    assert built.is_valid and built.span_id != int(SPAN, 16)  # a new span of the same trace


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"Nats-Msg-Id": "f/d/1"},
        {"traceparent": f"00-{TRACE}-{SPAN}-01"},  # sampled
        {"traceparent": f"00-{TRACE}-{SPAN}-03"},
        {"traceparent": f"00-{TRACE}-{SPAN}-00", "tracestate": "vendor=opaque"},  # the SDK parses it
        {"traceparent": f"01-{TRACE}-{SPAN}-00"},  # another version
        {"traceparent": f"00-{TRACE}-{SPAN}-00-extra"},
        {"traceparent": f" 00-{TRACE}-{SPAN}-00"},
        {"traceparent": f"00-{TRACE.upper()}-{SPAN}-00"},  # the propagator refuses upper case
        {"traceparent": f"00-{'0' * 32}-{SPAN}-00"},  # invalid ids: a new root, which the sampler decides
        {"traceparent": f"00-{TRACE}-{'0' * 16}-00"},
    ],
)
def test_anything_but_a_plain_unsampled_traceparent_is_left_to_the_sdk(headers: dict[str, str] | None) -> None:
    assert (
        telemetry.unsampled_child_context(headers, TracerProvider(sampler=ParentBased(ALWAYS_OFF)).get_tracer("t"))
        is None
    )


@pytest.mark.parametrize(
    "sampler",
    [
        ALWAYS_ON,
        TraceIdRatioBased(1.0),
        ParentBased(ALWAYS_OFF, remote_parent_not_sampled=ALWAYS_ON),
        _Custom(ALWAYS_ON),
    ],
)
def test_a_sampler_that_may_record_the_child_of_an_unsampled_parent_is_asked(sampler: Sampler) -> None:
    provider = TracerProvider(sampler=sampler)
    assert _started(provider, UNSAMPLED).is_recording()  # why the span must really be started
    assert telemetry.unsampled_child_context(UNSAMPLED, provider.get_tracer("t")) is None


def test_with_the_sdks_own_span_metrics_on_every_span_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")  # they count every started span
    fresh = TracerProvider(sampler=ParentBased(ALWAYS_OFF))  # a new sampler: its answer is not cached yet
    assert telemetry.unsampled_child_context(UNSAMPLED, fresh.get_tracer("t")) is None


def test_a_tracer_of_no_sdk_is_left_alone() -> None:
    assert telemetry.unsampled_child_context(UNSAMPLED, NoOpTracer()) is None
