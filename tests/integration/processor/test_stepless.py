"""A pipeline without steps against a real nats-server: each valid input goes on as the bytes it came in as,
anything else is dead-lettered, and the counts are those of a pipeline that encodes its outputs."""

import msgspec
from nats.aio.client import Client
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.processor.compiler import compile_pipeline
from fleetflow.processor.runner import Runner
from fleetflow.runtime import codec, jetstream, subjects
from fleetflow.runtime.codec import Reading, ReadingBatch
from tests.integration.processor.test_runner import BASE, nc, run_until, stored

__all__ = ["nc"]  # the fixture, imported to be used here

FLEET = "plain"


def counted(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, object], ...], int | float]:
    data = reader.get_metrics_data()
    assert data is not None
    return {tuple(sorted(point.attributes.items())): point.value  # type: ignore[union-attr]
            for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
            if metric.name == name for point in metric.data.data_points}  # fmt: skip


async def test_inputs_go_on_as_their_bytes_and_what_is_no_batch_is_dead_lettered(nc: Client) -> None:
    js = nc.jetstream()
    fleet = DeviceFleet.model_validate({"metadata": {"name": FLEET}, "spec": {"streams": {"partitions": 4}}})
    pipeline = Pipeline.model_validate({"metadata": {"name": "store"}, "spec": {"fleetRef": {"name": FLEET}}})
    await jetstream.provision_fleet(js, fleet)
    await jetstream.provision_pipeline(js, fleet, pipeline)
    from_gateway = codec.encode(ReadingBatch(fleet=FLEET, device="box-1", received_ms=BASE,
                                             readings=[Reading(1, BASE, {"temp": 4.5}), Reading(2, BASE, {"t": 1.0})]))  # fmt: skip
    # valid, but not as codec.encode writes it: spaces, another key order, an int metric, an unknown field
    other_form = f'{{ "device": "box-2", "fleet": "{FLEET}", "readings": [[7, {BASE}, {{"temp": 5}}]], '
    other_form += f'"received_ms": {BASE}, "note": "x" }}'
    inputs = [("box-1", from_gateway), ("box-2", other_form.encode()), ("box-3", b'{"device": "box-3"}')]
    last = 0
    for device, data in inputs:
        ack = await js.publish(subjects.telemetry_subject(FLEET, device), data, headers={"Nats-Msg-Id": device})
        last = ack.seq
    reader = InMemoryMetricReader()
    runner = Runner(js, fleet, pipeline, compile_pipeline(pipeline, fleet), 0,
                    MeterProvider(metric_readers=[reader]).get_meter("test"), checkpoint_interval=3600)  # fmt: skip
    await run_until(js, [runner], last)

    out = await stored(js, subjects.pipeline_stream(FLEET, "store"), f"ff.{FLEET}.pl.store.>")
    assert [(subject, msg_id) for subject, msg_id, _ in out] == [
        (f"ff.{FLEET}.pl.store.readings.box-1", "store/readings/box-1"),
        (f"ff.{FLEET}.pl.store.readings.box-2", "store/readings/box-2"),
    ]
    assert [data for _, _, data in out] == [from_gateway, other_form.encode()]
    assert codec.encode(codec.decode_batch(from_gateway)) == from_gateway  # what encoding it again gave
    writer = msgspec.json.Decoder(ReadingBatch)  # the other form is stored as its encoding would have been
    assert writer.decode(out[1][2]) == writer.decode(codec.encode(codec.decode_batch(other_form.encode())))

    dead = await stored(js, subjects.dead_letter_stream(FLEET), subjects.dead_letter_subject(FLEET, "processor-store"))
    assert [data for _, _, data in dead] == [b'{"device": "box-3"}']
    batches = counted(reader, "fleetflow_processor_batches")
    assert batches[(("outcome", "processed"),)] == 2 and batches[(("outcome", "invalid"),)] == 1
    published = counted(reader, "fleetflow_processor_records_published")
    assert published[(("duplicate", "false"), ("record", "readings"))] == 2
