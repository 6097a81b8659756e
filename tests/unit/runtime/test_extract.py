"""`telemetry.extract` gives what the W3C propagator gives for every header set, with or without a traceparent, in
whatever case a plain or a case-insensitive mapping (aiohttp's request headers) holds it."""

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fleetflow.runtime import telemetry

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _propagated(headers: dict[str, str]) -> trace.SpanContext:
    return trace.get_current_span(TraceContextTextMapPropagator().extract(dict(headers))).get_span_context()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Host": "gw", "Content-Type": "application/json"},
        {"tracestate": "vendor=opaque"},  # without a traceparent the propagator ignores it
        {"traceparent": PARENT},
        {"traceparent": PARENT, "tracestate": "vendor=opaque"},
        {"Traceparent": PARENT},  # looked up as written: not found
        {"traceparent": "00-garbage"},
    ],
)
@pytest.mark.parametrize("mapping", ["dict", "aiohttp headers"])
def test_extract_gives_what_the_propagator_gives(headers: dict[str, str], mapping: str) -> None:
    carrier = headers if mapping == "dict" else CIMultiDictProxy(CIMultiDict(headers))
    got = trace.get_current_span(telemetry.extract(carrier)).get_span_context()
    assert got == _propagated(headers)
    assert got.trace_state == _propagated(headers).trace_state


def test_no_headers_give_an_empty_context() -> None:
    assert telemetry.extract(None) == {} and telemetry.extract({}) == {}
