"""The operator's own metrics: reconciles by kind and outcome, their duration, errors, each resource's
readiness, and when the certificates in the fleets' TLS Secrets expire."""

import base64
import re
from typing import Any

import prometheus_client
from cryptography import x509

from fleetflow.processor.compiler import compile_pipeline
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import Api, create, delete, has_condition, mark_ready
from tests.operator.variants import fleet_doc, pipeline_doc
from tests.support.certificates import new_authority
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
    failed_before = failed_pipeline_reconciles()
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
    # Errors count the reconciles that failed or must retry (a busy machine can make one retry, e.g. on a
    # conflict), and nothing else: not the invalid ones.
    assert re.search(r'fleetflow_operator_reconcile_errors_total\{.*kind="Pipeline".*\}', text)
    errors = sample("fleetflow_operator_reconcile_errors_total", kind="Pipeline") - errors_before
    assert errors == failed_pipeline_reconciles() - failed_before


def failed_pipeline_reconciles() -> float:
    return sum(sample("fleetflow_operator_reconciles_total", kind="Pipeline", outcome=outcome)
               for outcome in ("retry", "error"))  # fmt: skip


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


EXPIRY = "fleetflow_tls_certificate_expiry_timestamp_seconds"


def expiries(fleet: str) -> dict[str, float]:
    """certificate -> the exported expiry, for one fleet in ns1."""
    return {
        s.labels["certificate"]: float(s.value)
        for family in prometheus_client.REGISTRY.collect()
        for s in family.samples
        if s.name == EXPIRY and s.labels.get("fleet") == fleet and s.labels.get("namespace") == "ns1"
    }


def not_after(secret: dict[str, Any], key: str) -> float:
    pem = base64.b64decode(secret["data"][key])  # type: ignore[index]
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


async def test_the_expiry_of_each_certificate_in_a_fleet_s_secrets_is_exported_and_follows_a_renewal(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    authority = new_authority()
    nats_tls = authority.tls_secret("certs-nats-tls", "ns1", ["certs-nats.ns1.svc"], days=2)
    gateway_tls = authority.tls_secret("certs-gateway-tls", "ns1", ["certs-gateway.ns1.svc"], days=10)
    for secret in (nats_tls, gateway_tls):
        async with emulator.post("/api/v1/namespaces/ns1/secrets", json=secret) as response:
            assert response.status == 201, await response.text()
    wanted = {"nats": not_after(nats_tls, "tls.crt"), "gateway": not_after(gateway_tls, "tls.crt"),
              "ca": not_after(nats_tls, "ca.crt")}  # fmt: skip
    assert len(set(wanted.values())) == 3, "the three certificates must be told apart by their expiry"
    async with start_operator():
        await create(emulator, fleet_doc(name="certs", nats={"managed": {"tls": {"secretName": "certs-nats-tls"}}},
                                         gateway={"tls": {"secretName": "certs-gateway-tls"}}))  # fmt: skip
        await wait_until(lambda: expiries("certs") == wanted, what=f"the expiries {wanted}", timeout=15)
        text = prometheus_client.generate_latest().decode()
        assert re.search(rf'{EXPIRY}\{{.*certificate="gateway".*fleet="certs".*namespace="ns1".*\}}', text), text

        renewed = authority.tls_secret("certs-gateway-tls", "ns1", ["certs-gateway.ns1.svc"], days=30)
        await emulator.write("v1", "secrets", "ns1", "certs-gateway-tls", {"data": renewed["data"]})
        wanted["gateway"] = not_after(renewed, "tls.crt")
        await wait_until(lambda: expiries("certs") == wanted, what="the renewed gateway certificate", timeout=15)

        await delete(emulator, "/apis/fleetflow.io/v1alpha1/namespaces/ns1/devicefleets/certs")
        await wait_until(lambda: expiries("certs") == {}, what="a deleted fleet's certificates to go", timeout=15)
