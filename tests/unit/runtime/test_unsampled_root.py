"""The gateway's SERVER span of a request that continues no trace, without the sampler: `unsampled_root_context`
must give what `start_span` gives such a span whenever it answers at all, and leave every case it cannot be sure of
to the SDK."""

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
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

DROPPING_ROOTS = [
    ParentBased(ALWAYS_OFF),  # fleetflow's sampler when nothing is exported
    ParentBased(ALWAYS_OFF, remote_parent_sampled=ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON),
    ParentBased(ALWAYS_OFF, remote_parent_not_sampled=ParentBased(ALWAYS_ON)),
]


class _Custom(ParentBased):
    """A parent-based sampler that decides otherwise: its description alone must not be trusted."""

    def should_sample(self, *args, **kwargs):  # type: ignore[no-untyped-def,unused-ignore]
        return ALWAYS_ON.should_sample(*args, **kwargs)


class _SequentialIds(RandomIdGenerator):
    """Trace ids that are not random, which the SDK says in the trace flags."""

    def is_trace_id_random(self) -> bool:
        return False


def _started(provider: TracerProvider) -> Span:
    return provider.get_tracer("t").start_span("POST telemetry", Context(), SpanKind.SERVER)


@pytest.mark.parametrize("sampler", DROPPING_ROOTS, ids=lambda s: s.get_description()[:60])
@pytest.mark.parametrize("ids", [RandomIdGenerator(), _SequentialIds()], ids=["random ids", "ids not random"])
def test_a_root_the_sampler_drops_gets_the_context_the_sdk_would_give_it(
    sampler: Sampler, ids: RandomIdGenerator
) -> None:
    provider = TracerProvider(sampler=sampler, id_generator=ids)
    span = _started(provider)
    assert not span.is_recording()
    built = telemetry.unsampled_root_context(provider.get_tracer("t"))
    assert built is not None
    expected = span.get_span_context()
    assert (built.trace_flags, built.trace_state, built.is_remote) == (
        expected.trace_flags, expected.trace_state, expected.is_remote)  # fmt: skip
    assert built.is_valid and not built.trace_flags.sampled
    again = telemetry.unsampled_root_context(provider.get_tracer("t"))
    assert again is not None and (again.trace_id, again.span_id) != (built.trace_id, built.span_id)  # new ids each


@pytest.mark.parametrize(
    "sampler",
    [
        ALWAYS_ON,
        DEFAULT_ON,  # the SDK's default: roots are recorded
        TraceIdRatioBased(1.0),
        ParentBasedTraceIdRatio(1.0),
        ParentBased(ALWAYS_ON, remote_parent_sampled=ParentBased(ALWAYS_OFF)),  # a nested root is no root
        _Custom(ALWAYS_OFF),
    ],
    ids=lambda s: s.get_description()[:60],
)
def test_a_sampler_that_may_record_a_root_is_asked(sampler: Sampler) -> None:
    provider = TracerProvider(sampler=sampler)
    assert _started(provider).is_recording()  # why the span must really be started
    assert telemetry.unsampled_root_context(provider.get_tracer("t")) is None


def test_with_the_sdks_own_span_metrics_on_every_root_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")  # they count every started span
    fresh = TracerProvider(sampler=ParentBased(ALWAYS_OFF))  # a new sampler: its answer is not cached yet
    assert telemetry.unsampled_root_context(fresh.get_tracer("t")) is None


def test_a_tracer_of_no_sdk_is_left_alone() -> None:
    assert telemetry.unsampled_root_context(NoOpTracer()) is None
