"""The API models: defaults a user relies on, and validation errors that name field, value and rule."""

import pytest

from fleetflow.api import DeviceFleet, Pipeline, SpecError, parse_resource
from fleetflow.api.quantities import parse_bytes, parse_duration


def fleet_doc(**spec: object) -> dict[str, object]:
    return {"apiVersion": "fleetflow.io/v1alpha1", "kind": "DeviceFleet", "metadata": {"name": "demo"}, "spec": spec}


def pipeline_doc(**spec: object) -> dict[str, object]:
    return {
        "apiVersion": "fleetflow.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "pl"},
        "spec": {"fleetRef": {"name": "demo"}, **spec},
    }


def problems(document: dict[str, object]) -> str:
    with pytest.raises(SpecError) as caught:
        parse_resource(document, "test.yaml")
    return str(caught.value)


def test_fleet_defaults() -> None:
    fleet = parse_resource(fleet_doc())
    assert isinstance(fleet, DeviceFleet)
    spec = fleet.spec
    assert spec.gateway.replicas == 1
    assert spec.gateway.max_batch_readings == 1000
    assert spec.gateway.max_body_bytes == 1048576
    assert spec.gateway.rate_limit.readings_per_second == 0
    assert spec.nats.external is None and spec.nats.managed_or_default.replicas == 1
    assert spec.streams.max_age_seconds == 7 * 86400
    assert spec.streams.duplicate_window_seconds == 120
    assert spec.streams.max_bytes_value == 5 * 2**30
    assert spec.auth.mode == "token" and spec.auth.secret_ref is None


def test_pipeline_defaults() -> None:
    pipeline = parse_resource(pipeline_doc())
    assert isinstance(pipeline, Pipeline)
    assert pipeline.fleet == "demo"
    assert pipeline.spec.sink.kind == "sqlite"
    assert pipeline.spec.sink.ttl_seconds == 30 * 86400
    assert pipeline.spec.sink.tables.readings == "readings"
    assert pipeline.spec.processor.replicas == 1
    assert pipeline.spec.delivery.max_deliver == 5
    assert pipeline.spec.delivery.ack_wait_seconds == 30


def test_camel_case_fields_round_trip() -> None:
    fleet = parse_resource(fleet_doc(gateway={"maxBatchReadings": 50}, streams={"duplicateWindow": "5m"}))
    assert isinstance(fleet, DeviceFleet)
    dumped = fleet.to_k8s()["spec"]
    assert dumped["gateway"]["maxBatchReadings"] == 50
    assert dumped["streams"]["duplicateWindow"] == "5m"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (fleet_doc(gateway={"replicas": -1}), "spec.gateway.replicas = -1: Input should be greater than or equal to 0"),
        (fleet_doc(gateway={"maxBatchReadings": 0}), "spec.gateway.maxBatchReadings = 0"),
        (fleet_doc(gateway={"maxBodyBytes": 10}), "spec.gateway.maxBodyBytes = 10"),
        (fleet_doc(gateway={"rateLimit": {"readingsPerSecond": -5}}), "spec.gateway.rateLimit.readingsPerSecond = -5"),
        (fleet_doc(gateway={"replica": 2}), "spec.gateway.replica: unknown field"),
        (fleet_doc(streams={"maxAge": "7x"}), "spec.streams.maxAge = '7x': duration '7x' is not valid: use a number"),
        (fleet_doc(streams={"maxBytes": "10GB"}), "spec.streams.maxBytes = '10GB': size '10GB' is not valid"),
        (fleet_doc(streams={"replicas": 2}), "spec.streams.replicas = 2: Input should be 1 or 3"),
        (fleet_doc(streams={"replicas": 3}), "streams.replicas 3 exceeds nats.managed.replicas 1"),
        (fleet_doc(streams={"partitions": 0}), "spec.streams.partitions = 0"),
        (
            fleet_doc(streams={"maxBytes": "10Gi"}),
            "streams.maxBytes '10Gi' does not fit nats.managed.storageSize '10Gi': JetStream reserves it",
        ),
        (fleet_doc(nats={"external": {"url": "nats://x:4222"}, "managed": {}}), "set either nats.external or nats"),
        (fleet_doc(nats={"external": {"url": "http://x"}}), "spec.nats.external.url = 'http://x'"),
        (fleet_doc(devices={"idPattern": "(["}), "regular expression '([' does not compile"),
        (fleet_doc(auth={"secretRef": {"name": "Bad_Name"}}), "spec.auth.secretRef.name = 'Bad_Name'"),
        (
            {**fleet_doc(), "metadata": {"name": "a.b"}},
            "metadata.name = 'a.b': name 'a.b' is not valid: use lowercase letters",
        ),
        ({**fleet_doc(), "metadata": {}}, "metadata.name: required field is missing"),
        (
            pipeline_doc(sink={"kind": "postgres"}),
            "spec.sink.kind = 'postgres': Input should be 'sqlite' or 'cassandra'",
        ),
        (pipeline_doc(sink={"kind": "cassandra"}), "sink.kind is 'cassandra' but sink.cassandra is missing"),
        (
            pipeline_doc(sink={"cassandra": {"contactPoints": ["c"], "localDc": "dc1"}}),
            "sink.cassandra is set but sink.kind is 'sqlite'",
        ),
        (pipeline_doc(sink={"tables": {"readings": "drop table"}}), "table name 'drop table' is not valid"),
        (pipeline_doc(sink={"ttl": "forever"}), "spec.sink.ttl = 'forever'"),
        (pipeline_doc(processor={"replicas": 0}), "spec.processor.replicas = 0"),
        (pipeline_doc(delivery={"maxDeliver": 0}), "spec.delivery.maxDeliver = 0"),
        ({**pipeline_doc(), "spec": {}}, "spec.fleetRef: required field is missing"),
    ],
)
def test_validation_errors_name_field_value_and_rule(document: dict[str, object], expected: str) -> None:
    message = problems(document)
    assert message.startswith("test.yaml: ")
    assert expected in message


def test_unknown_kind_and_api_version() -> None:
    assert "kind = 'Fleet': accepted kinds are DeviceFleet, Pipeline" in problems({**fleet_doc(), "kind": "Fleet"})
    assert "accepted is 'fleetflow.io/v1alpha1'" in problems({**fleet_doc(), "apiVersion": "fleetflow.io/v1"})
    assert "expected a mapping" in problems(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_every_problem_is_reported_at_once() -> None:
    error = problems(fleet_doc(gateway={"replicas": -1}, streams={"maxAge": "soon"}))
    assert "spec.gateway.replicas" in error and "spec.streams.maxAge" in error


def test_device_labels_by_rule() -> None:
    fleet = parse_resource(fleet_doc(devices={"labels": [{"match": "^cool", "labels": {"kind": "cooler"}},
                                                         {"match": "-b$", "labels": {"site": "b"}}]}))  # fmt: skip
    assert isinstance(fleet, DeviceFleet)
    assert fleet.spec.devices.labels_of("cooler-b") == {"kind": "cooler", "site": "b"}
    assert fleet.spec.devices.labels_of("meter-a") == {}


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("1h30m", 5400), ("7d", 604800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("value", "size"), [(1024, 1024), ("1Ki", 1024), ("10Gi", 10 * 2**30), ("2G", 2 * 10**9)])
def test_sizes(value: int | str, size: int) -> None:
    assert parse_bytes(value) == size


@pytest.mark.parametrize("bad", ["", "10 Gi", "-1", "1.5Gi", True])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        parse_bytes(bad)  # type: ignore[arg-type]


def test_an_external_nats_takes_any_telemetry_size() -> None:
    doc = fleet_doc(nats={"external": {"url": "nats://x:4222"}}, streams={"maxBytes": "1Ti"})
    assert DeviceFleet.model_validate(doc).spec.streams.max_bytes_value == 2**40
