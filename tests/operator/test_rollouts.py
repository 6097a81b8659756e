"""What restarts what: each component's pods roll for changes it reads, and only for those."""

from typing import Any

import pytest

from fleetflow.operator.builders import common, gateway, nats, pipeline
from fleetflow.operator.options import OperatorOptions
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import Api, create, patch
from tests.operator.variants import fleet, fleet_doc, pipeline_doc
from tests.operator.variants import pipeline as pipeline_of

IMAGE = "registry.example/fleetflow:test"
BASE_FLEET: dict[str, Any] = {"nats": {"managed": {"replicas": 3, "storageSize": "10Gi"}}, "streams": {"partitions": 4}}
BASE_PIPELINE: dict[str, Any] = {"processor": {"replicas": 2}, "writer": {"replicas": 1}}


def template_hashes(fleet_spec: dict[str, Any], pipeline_spec: dict[str, Any]) -> dict[str, str]:
    """The config hash on each component's pod template."""
    f = fleet(fleet_doc(**fleet_spec))
    p = pipeline_of(pipeline_doc(**pipeline_spec))
    templates = {
        "gateway": gateway.gateway_statefulset(f, IMAGE, "Always", {}),
        "processor": pipeline.processor_statefulset(f, p, IMAGE, "Always", {}),
        "writer": pipeline.writer_deployment(f, p, IMAGE, "Always", {}),
    }
    return {
        component: obj["spec"]["template"]["metadata"]["annotations"][common.CONFIG_HASH_ANNOTATION]
        for component, obj in templates.items()
    }


def restarted(fleet_change: dict[str, Any], pipeline_change: dict[str, Any]) -> set[str]:
    before = template_hashes(BASE_FLEET, BASE_PIPELINE)
    after = template_hashes({**BASE_FLEET, **fleet_change}, {**BASE_PIPELINE, **pipeline_change})
    return {component for component in before if before[component] != after[component]}


@pytest.mark.parametrize(
    ("fleet_change", "pipeline_change", "expected"),
    [
        ({"gateway": {"replicas": 5}}, {}, set()),
        ({"gateway": {"autoscaling": {"maxReplicas": 9}}}, {}, set()),
        ({"nats": {"managed": {"replicas": 3, "storageSize": "50Gi"}}}, {}, set()),
        ({"gateway": {"maxBodyBytes": 4096}}, {}, {"gateway"}),
        ({"auth": {"secretRef": {"name": "tokens", "key": "k"}}}, {}, {"gateway"}),
        ({"devices": {"labels": [{"match": "^t-", "labels": {"site": "lab"}}]}}, {}, {"gateway", "processor"}),
        ({"streams": {"partitions": 4, "maxAge": "1d"}}, {}, {"gateway", "processor", "writer"}),
        ({}, {"processor": {"replicas": 4}}, {"processor"}),
        ({}, {"steps": [{"name": "warm", "filter": {"condition": "metrics.t > 0.0"}}]}, {"processor"}),
        ({}, {"writer": {"replicas": 1, "batchMessages": 64}}, {"writer"}),
        ({}, {"sink": {"kind": "sqlite", "ttl": "1d"}}, {"writer"}),
    ],
    ids=[
        "scale-gateway",
        "autoscale-gateway",
        "resize-nats",
        "gateway-limits",
        "device-auth",
        "device-labels",
        "stream-retention",
        "scale-processor",
        "steps",
        "writer-batch",
        "sink",
    ],
)
def test_each_component_restarts_only_for_what_it_reads(
    fleet_change: dict[str, Any], pipeline_change: dict[str, Any], expected: set[str]
) -> None:
    assert restarted(fleet_change, pipeline_change) == expected


def test_the_config_map_still_carries_the_whole_change() -> None:
    """The hash skips what a component does not read, but its ConfigMap is the complete, current config."""
    f = fleet(fleet_doc(**{**BASE_FLEET, "gateway": {"replicas": 5}}))
    p = pipeline_of(pipeline_doc(**BASE_PIPELINE))
    assert "replicas: 5" in pipeline.processor_config_map(f, p)["data"]["config.yaml"]


async def test_scaling_the_gateway_leaves_processors_and_writers_running(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator():
        await create(emulator, fleet_doc())
        await create(emulator, pipeline_doc())
        processor = await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "store-processor"),
                                     what="the processor")  # fmt: skip
        writer = await wait_until(lambda: emulator.get("apps/v1", "deployments", "ns1", "store-writer"),
                                  what="the writer")  # fmt: skip

        await patch(emulator, "devicefleets", "cold", {"spec": {"gateway": {"replicas": 4}}})

        def processor_config_followed() -> bool:
            config = emulator.get("v1", "configmaps", "ns1", "store-processor-config") or {"data": {}}
            return "replicas: 4" in config["data"].get("config.yaml", "")

        await wait_until(processor_config_followed, what="the pipeline to read the scaled fleet")
        assert (
            emulator.get("apps/v1", "statefulsets", "ns1", "store-processor")["spec"]["template"]
            == (processor["spec"]["template"])
        ), "scaling the gateway must not roll the processors"
        assert (
            emulator.get("apps/v1", "deployments", "ns1", "store-writer")["spec"]["template"]
            == (writer["spec"]["template"])
        ), "scaling the gateway must not roll the writers"


async def test_the_gateway_gets_the_service_environment(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    options = OperatorOptions(image="fleetflow:test", resync_seconds=0.5, log_level="debug",
                              otlp_endpoint="http://collector.observability:4317")  # fmt: skip
    async with start_operator(options=options):
        await create(emulator, fleet_doc())
        found = await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"),
                                 what="the gateway")  # fmt: skip
        env = {e["name"]: e.get("value") for e in found["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["FLEETFLOW_LOG_LEVEL"] == "debug"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector.observability:4317"


def test_managed_nats_has_a_disruption_budget_and_a_hard_spread() -> None:
    f = fleet(fleet_doc(nats={"managed": {"replicas": 3}}))
    objects = {o["kind"]: o for o in nats.nats_objects(f, "nats:2.15.1-alpine", "IfNotPresent", {})}
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert objects["PodDisruptionBudget"]["spec"]["selector"] == objects["StatefulSet"]["spec"]["selector"]
    spread = objects["StatefulSet"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    on_nodes = {c["topologyKey"]: c["whenUnsatisfiable"] for c in spread}["kubernetes.io/hostname"]
    assert on_nodes == "DoNotSchedule"
