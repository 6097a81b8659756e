"""telemetry.SummedCounter is read by the metric readers exactly as the SDK's Counter would be."""

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum

from fleetflow.runtime.telemetry import SummedCounter

HTTP, GRPC = (("protocol", "http"),), (("protocol", "grpc"),)


def collected(reader: InMemoryMetricReader) -> dict[str, Sum]:
    data = reader.get_metrics_data()
    assert data is not None
    sums = {m.name: m.data for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert all(isinstance(s, Sum) for s in sums.values())
    return sums  # type: ignore[return-value]


def by_protocol(data: Sum) -> dict[str, float]:
    return {str((point.attributes or {})["protocol"]): point.value for point in data.data_points}


def test_sums_are_reported_as_the_sdk_counter_reports_them() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    reference = meter.create_counter("reference", unit="1")
    summed = SummedCounter(meter, "summed", unit="1", description="readings")
    for amount, attributes in [(0, HTTP), (0, GRPC), (100, HTTP), (5, GRPC), (100, HTTP)]:
        reference.add(amount, dict(attributes))
        summed.add(amount, attributes)

    metrics = collected(reader)
    want, got = metrics["reference"], metrics["summed"]
    assert (got.is_monotonic, got.aggregation_temporality) == (want.is_monotonic, want.aggregation_temporality)
    assert by_protocol(got) == by_protocol(want) == {"http": 200, "grpc": 5}

    summed.add(1, HTTP)  # each collection reads what was added until then
    assert by_protocol(collected(reader)["summed"]) == {"http": 201, "grpc": 5}
