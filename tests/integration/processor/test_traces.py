"""The processor's spans against a real nats-server: sampled, a CONSUMER span per input under the device's span
and a PRODUCER span per output under it, whose context the output carries; not sampled, no span is recorded and
the output carries a new span id of the input's trace, as the unrecorded PRODUCER span would have."""

from nats.aio.client import Client
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import SpanKind

from fleetflow.runtime import codec, subjects
from fleetflow.runtime.codec import Reading, ReadingBatch
from tests.integration.processor.test_runner import BASE, nc, provision, resources, run_until, runner

__all__ = ["nc"]  # the fixture, imported to be used here

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
DEVICE_SPAN_ID = "00f067aa0ba902b7"
TRACESTATE = "vendor=opaque"


async def traced_output(
    nc: Client, fleet_name: str, flags: str, sampler: Sampler
) -> tuple[dict[str, str], list[ReadableSpan]]:
    """The headers of the readings output of one input sent with `flags`, and the spans the processor recorded."""
    js = nc.jetstream()
    fleet, pipeline = resources(fleet_name)
    await provision(js, fleet, pipeline)
    batch = ReadingBatch(fleet=fleet_name, device="box-1", readings=[Reading(1, BASE, {"temp": 9.0})], received_ms=BASE)
    headers = {"Nats-Msg-Id": f"{fleet_name}/box-1/1-1", "traceparent": f"00-{TRACE_ID}-{DEVICE_SPAN_ID}-{flags}",
               "tracestate": TRACESTATE}  # fmt: skip
    ack = await js.publish(subjects.telemetry_subject(fleet_name, "box-1"), codec.encode(batch), headers=headers)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    processor = runner(js, fleet, pipeline)
    processor.tracer = provider.get_tracer("fleetflow.processor")
    await run_until(js, [processor], ack.seq)
    sub = await js.pull_subscribe(f"ff.{fleet_name}.pl.chain.readings.>",
                                  stream=subjects.pipeline_stream(fleet_name, "chain"))  # fmt: skip
    [output] = await sub.fetch(1, timeout=2)
    assert output.headers is not None
    return output.headers, list(exporter.get_finished_spans())


async def test_a_sampled_input_has_a_consumer_span_and_each_output_a_producer_span_it_carries(nc: Client) -> None:
    headers, spans = await traced_output(nc, "sampled", "01", ParentBased(ALWAYS_OFF))
    [consumer] = [s for s in spans if s.kind == SpanKind.CONSUMER]
    [producer] = [s for s in spans if s.kind == SpanKind.PRODUCER and s.name == "send ff.sampled.pl.chain.readings"]
    assert consumer.name == "process chain" and consumer.parent is not None and producer.parent is not None
    assert (f"{consumer.context.trace_id:032x}", f"{consumer.parent.span_id:016x}") == (TRACE_ID, DEVICE_SPAN_ID)
    assert producer.parent.span_id == consumer.context.span_id
    assert (
        producer.attributes is not None
        and producer.attributes["messaging.message.id"] == "chain/readings/sampled/box-1/1-1"
    )
    assert headers["traceparent"] == f"00-{TRACE_ID}-{producer.context.span_id:016x}-01"
    assert headers["tracestate"] == TRACESTATE


async def test_an_unsampled_input_records_nothing_and_its_outputs_carry_a_new_span_of_its_trace(nc: Client) -> None:
    headers, spans = await traced_output(nc, "unsampled", "00", ParentBased(ALWAYS_OFF))
    assert spans == []
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "00")
    assert len(span_id) == 16 and int(span_id, 16) and span_id != DEVICE_SPAN_ID
    assert headers["tracestate"] == TRACESTATE


async def test_an_unsampled_input_is_recorded_when_the_processor_samples_everything(nc: Client) -> None:
    headers, spans = await traced_output(nc, "always", "00", ALWAYS_ON)
    [consumer] = [s for s in spans if s.kind == SpanKind.CONSUMER]
    [producer] = [s for s in spans if s.kind == SpanKind.PRODUCER and s.name == "send ff.always.pl.chain.readings"]
    assert producer.parent is not None and producer.parent.span_id == consumer.context.span_id
    assert headers["traceparent"] == f"00-{TRACE_ID}-{producer.context.span_id:016x}-01"
