"""The certificate expiry gauge: the earliest notAfter of a chain, one series per certificate and labels, replaced
on a new record and gone when forgotten; a file that holds no certificate is refused by name."""

from pathlib import Path

import pytest
from cryptography import x509
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fleetflow.runtime import certificates
from fleetflow.runtime.settings import ServiceSettings, SettingsError
from tests.support.certificates import new_authority

GAUGE = "fleetflow_tls_certificate_expiry_timestamp_seconds"


def not_after(pem: bytes) -> float:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def exported(reader: InMemoryMetricReader) -> dict[tuple[tuple[str, str], ...], float]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        tuple(sorted((str(k), str(v)) for k, v in (point.attributes or {}).items())): float(point.value)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == GAUGE
        for point in metric.data.data_points  # type: ignore[union-attr]
    }


@pytest.fixture
def reader() -> InMemoryMetricReader:
    reader = InMemoryMetricReader()
    certificates.register(MeterProvider(metric_readers=[reader]).get_meter("test"))
    certificates.forget()  # what other tests of this process recorded
    return reader


def test_a_chain_expires_with_its_first_certificate_to_lapse() -> None:
    authority = new_authority()
    leaf, _ = authority.issue(["gw.example"], days=0.5)  # sooner than the CA (a day)
    assert certificates.not_after(leaf + authority.pem, "chain") == not_after(leaf)
    assert certificates.not_after(authority.pem + leaf, "chain") == not_after(leaf)


def test_each_certificate_is_a_series_replaced_by_a_renewal_and_gone_when_forgotten(
    reader: InMemoryMetricReader,
) -> None:
    authority = new_authority()
    first, _ = authority.issue(["gw.example"], days=2)
    renewed, _ = authority.issue(["gw.example"], days=30)
    certificates.record("gateway", first, "first", fleet="cold", namespace="ns1")
    certificates.record("ca", authority.pem, "ca", fleet="cold", namespace="ns1")
    certificates.record("gateway", first, "warm", fleet="warm", namespace="ns1")
    certificates.record("gateway", renewed, "renewed", fleet="cold", namespace="ns1")
    cold = (("certificate", "gateway"), ("fleet", "cold"), ("namespace", "ns1"))
    cold_ca = (("certificate", "ca"), ("fleet", "cold"), ("namespace", "ns1"))
    warm = (("certificate", "gateway"), ("fleet", "warm"), ("namespace", "ns1"))
    assert exported(reader) == {cold: not_after(renewed), cold_ca: not_after(authority.pem), warm: not_after(first)}

    certificates.forget(["ca"], fleet="cold")
    assert set(exported(reader)) == {cold, warm}
    certificates.forget(fleet="cold", namespace="ns1")
    assert set(exported(reader)) == {warm}


def test_a_file_without_a_certificate_is_refused_by_name(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("not a certificate")
    with pytest.raises(ValueError, match=f"{not_pem}: not a PEM certificate"):
        certificates.record_file("ca", not_pem)
    with pytest.raises(ValueError, match=f"{tmp_path / 'missing.crt'}: cannot read the certificate"):
        certificates.record_file("ca", tmp_path / "missing.crt")
    with pytest.raises(SettingsError, match=f"nats_tls_ca_file = '{not_pem}'"):
        ServiceSettings(nats_tls_ca_file=not_pem).nats_tls()


def test_the_ca_a_service_verifies_nats_with_is_recorded_when_it_is_loaded(
    tmp_path: Path, reader: InMemoryMetricReader
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(new_authority().pem)
    assert ServiceSettings(nats_tls_ca_file=ca).nats_tls() is not None
    assert exported(reader) == {(("certificate", "ca"),): not_after(ca.read_bytes())}
