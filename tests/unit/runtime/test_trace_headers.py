"""The trace headers the processor writes without the SDK's propagator: the same as inject() writes."""

import pytest
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState, set_span_in_context

from fleetflow.runtime import telemetry

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


@pytest.mark.parametrize("flags", [0, 1])
@pytest.mark.parametrize("state", [TraceState(), TraceState([("vendor", "opaque"), ("other", "1")])])
def test_headers_of_a_span_context_are_what_inject_writes(flags: int, state: TraceState) -> None:
    context = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(flags), trace_state=state)
    injected = telemetry.inject({}, set_span_in_context(NonRecordingSpan(context)))
    assert telemetry.headers_of(context) == injected
    assert injected["traceparent"] == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-0{flags}"


def test_an_invalid_span_context_has_no_headers_as_inject_writes_none() -> None:
    invalid = SpanContext(0, 0, is_remote=False)
    assert telemetry.headers_of(invalid) == telemetry.inject({}, set_span_in_context(NonRecordingSpan(invalid))) == {}


@pytest.mark.parametrize(
    ("traceparent", "unsampled"),
    [
        (f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00", True),
        (f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-02", True),  # another flag, sampled clear
        (f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01", False),
        (f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-03", False),
        (f"01-{TRACE_ID:032x}-{SPAN_ID:016x}-00", False),  # another version: left to the SDK
        (f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00-extra", False),
        ("", False),
    ],
)
def test_only_a_version_00_traceparent_with_the_sampled_flag_clear_is_unsampled(
    traceparent: str, unsampled: bool
) -> None:
    assert telemetry.unsampled({"traceparent": traceparent}) is unsampled


def test_an_unsampled_child_is_a_new_span_of_the_same_trace_with_the_same_flags_and_state() -> None:
    parent = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"
    children = [telemetry.unsampled_child({"traceparent": parent, "tracestate": "vendor=opaque", "Nats-Msg-Id": "x"})
                for _ in range(100)]  # fmt: skip
    for child in children:
        version, trace_id, span_id, flags = child["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", f"{TRACE_ID:032x}", "00")
        assert len(span_id) == 16 and int(span_id, 16) not in (0, SPAN_ID)
        assert (child["tracestate"], child["Nats-Msg-Id"]) == ("vendor=opaque", "x")
    assert len({child["traceparent"] for child in children}) == 100
