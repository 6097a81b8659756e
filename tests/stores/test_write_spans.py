"""A store write's span links to the messages whose records it writes and to no other: an aggregate write is not
in a reading's trace, and a message that could not be decoded (dead-lettered) is linked from no write."""

import pytest
from nats.aio.msg import Msg
from opentelemetry.metrics import get_meter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fleetflow.runtime import codec
from fleetflow.writer import persist
from tests.stores.conftest import Stores, unique_fleet
from tests.stores.test_contract import T0, aggregate, batch

READING_TRACE, AGGREGATE_TRACE, POISON_TRACE = "a" * 32, "b" * 32, "c" * 32


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """The writer's spans, recorded by a provider of this test's own (the process-wide one records nothing)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(persist, "tracer", provider.get_tracer("test"))
    return exporter


def message(subject: str, data: bytes, trace_id: str) -> Msg:
    return Msg(_client=None, subject=subject, data=data, headers={"traceparent": f"00-{trace_id}-{'1' * 16}-01"})  # type: ignore[arg-type]


def linked_traces(span: ReadableSpan) -> set[str]:
    return {format(link.context.trace_id, "032x") for link in span.links}


async def test_each_write_links_only_to_the_messages_it_writes(stores: Stores, exported: InMemorySpanExporter) -> None:
    store, fleet = await stores.open(), unique_fleet()
    prefix = f"ff.{fleet}.pl.p1"
    msgs = [
        message(f"{prefix}.readings.d1", codec.encode(batch(fleet, "d1", range(1, 4))), READING_TRACE),
        message(f"{prefix}.aggregates.g1", codec.encode(aggregate(fleet, "g1", T0)), AGGREGATE_TRACE),
        message(f"{prefix}.readings.d2", b"not a batch", POISON_TRACE),
    ]
    outcomes = await persist.RecordWriter(store, get_meter("test"), "writer-p1").handle(msgs)

    assert outcomes[0] is None and outcomes[1] is None
    assert outcomes[2] is not None and outcomes[2].poison
    spans = {span.name: span for span in exported.get_finished_spans()}
    assert linked_traces(spans["upsert readings"]) == {READING_TRACE}
    assert linked_traces(spans["upsert aggregates"]) == {AGGREGATE_TRACE}
    assert format(spans["upsert aggregates"].context.trace_id, "032x") == AGGREGATE_TRACE
    poison = next(s for s in exported.get_finished_spans() if format(s.context.trace_id, "032x") == POISON_TRACE)
    assert poison.status.status_code == StatusCode.ERROR and "not a valid ReadingBatch" in str(
        poison.status.description
    )
    assert poison.attributes is not None and poison.attributes["messaging.consumer.group.name"] == "writer-p1"
