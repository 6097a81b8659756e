"""The operator's own metrics: reconciles by kind and outcome, their duration, errors, and each resource's
readiness."""

import re

import prometheus_client

from fleetflow.processor.compiler import compile_pipeline
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import Api, create, delete, has_condition, mark_ready
from tests.operator.variants import fleet_doc, pipeline_doc
from tests.support.natsserver import NatsServer


def sample(name: str, **labels: str) -> float:
    """The value of one series in the process's Prometheus registry (where the operator's meter exports)."""
    wanted = set(labels.items())
    for family in prometheus_client.REGISTRY.collect():
        for found in family.samples:
            if found.name == name and wanted <= set(found.labels.items()):
                return float(found.value)
    return 0.0


async def test_reconciles_are_counted_by_kind_and_outcome_and_timed(
    apiserver: Api, start_operator: OperatorStarter, nats_server: NatsServer
) -> None:
    emulator, _ = apiserver
    before = sample("fleetflow_operator_reconciles_total", kind="Pipeline", outcome="invalid")  # earlier tests' too
    errors_before = sample("fleetflow_operator_reconcile_errors_total", kind="Pipeline")  # earlier tests' too
    async with start_operator(compile_pipeline=compile_pipeline):
        await create(emulator, fleet_doc(nats={"external": {"url": nats_server.url}}))
        await create(emulator, pipeline_doc(steps=[{"name": "bad", "filter": {"condition": "metrics.t >"}}]))
        await wait_until(lambda: sample("fleetflow_operator_reconciles_total", kind="Pipeline", outcome="invalid")
                         > before, what="a pipeline reconcile counted as invalid", timeout=15)  # fmt: skip
        await wait_until(lambda: sample("fleetflow_operator_reconciles_total", kind="DeviceFleet") > 0,
                         what="a counted fleet reconcile", timeout=15)  # fmt: skip
    assert sample("fleetflow_operator_reconcile_duration_seconds_count", kind="DeviceFleet") > 0
    text = prometheus_client.generate_latest().decode()
    assert re.search(r'fleetflow_operator_reconcile_duration_seconds_bucket\{.*kind="Pipeline".*\}', text)
    # An invalid spec is the user's to fix, not an operator error; the errors series is exported all the same.
    assert re.search(r'fleetflow_operator_reconcile_errors_total\{.*kind="Pipeline".*\}', text)
    assert sample("fleetflow_operator_reconcile_errors_total", kind="Pipeline") == errors_before


def ready_series(name: str) -> list[float]:
    """fleetflow_operator_resource_ready of one DeviceFleet in ns1: [] when not exported, else [value]."""
    wanted = {"kind": "DeviceFleet", "namespace": "ns1", "name": name}
    return [
        float(s.value)
        for family in prometheus_client.REGISTRY.collect()
        for s in family.samples
        if s.name == "fleetflow_operator_resource_ready" and wanted.items() <= s.labels.items()
    ]


async def test_each_resource_s_readiness_is_a_series_that_follows_its_ready_condition(
    apiserver: Api, start_operator: OperatorStarter, nats_server: NatsServer
) -> None:
    emulator, _ = apiserver
    async with start_operator():
        await create(emulator, fleet_doc(name="gauged", nats={"external": {"url": nats_server.url}}))
        await wait_until(lambda: ready_series("gauged") == [0.0], what="not ready: the gateway has no pods yet")
        await mark_ready(emulator, "apps/v1", "statefulsets", "gauged-gateway")
        await wait_until(lambda: emulator.get("apps/v1", "deployments", "ns1", "gauged-api"), what="the API Deployment")
        await mark_ready(emulator, "apps/v1", "deployments", "gauged-api")
        await wait_until(lambda: has_condition(emulator, "devicefleets", "gauged", "Ready", "True"), what="Ready")
        await wait_until(lambda: ready_series("gauged") == [1.0], what="the series to follow Ready")
        text = prometheus_client.generate_latest().decode()
        assert re.search(r'fleetflow_operator_resource_ready\{kind="DeviceFleet",name="gauged",namespace="ns1"', text)

        await delete(emulator, "/apis/fleetflow.io/v1alpha1/namespaces/ns1/devicefleets/gauged")
        await wait_until(lambda: ready_series("gauged") == [], what="a deleted fleet's series to go")
