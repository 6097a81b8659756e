"""The fleet's own CA (`tls: {generate: true}`): what it issues, for which names, and when a certificate is due
for renewal, with the clock handed in."""

import base64
import datetime
import ssl
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fleetflow.api import SpecError
from fleetflow.api.tls import CA_KEY, CERT_KEY, KEY_KEY
from fleetflow.operator import fleet_ca
from fleetflow.operator.builders import gateway, nats
from tests.operator.variants import fleet, fleet_doc

NOW = datetime.datetime(2026, 12, 2, 10, 0, tzinfo=datetime.UTC)
GENERATED = fleet(
    fleet_doc(
        gateway={"tls": {"generate": True}, "ingress": {"http": {"host": "telemetry.example.com"}},
                 "routes": {"parentRefs": [{"name": "public"}], "grpc": {"hostnames": ["grpc.example.com"]}}},
        nats={"managed": {"tls": {"generate": True}}},
    )
)  # fmt: skip


def as_secret(data: dict[str, bytes]) -> dict[str, Any]:
    return {"metadata": {"name": "x"}, "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def test_generate_asks_for_one_certificate_per_component_in_its_own_secret() -> None:
    nats_want, gateway_want = fleet_ca.wanted(GENERATED)
    assert (nats_want.secret_name, gateway_want.secret_name) == ("cold-nats-tls", "cold-gateway-tls")
    assert (
        nats.tls_secret_name(GENERATED) == "cold-nats-tls" and gateway.tls_secret_name(GENERATED) == "cold-gateway-tls"
    )
    assert set(nats.tls_dns_names(GENERATED)) == set(nats_want.dns_names)
    assert {"cold-gateway.ns1.svc", "telemetry.example.com", "grpc.example.com"} <= set(gateway_want.dns_names)
    fed = fleet(fleet_doc(gateway={"tls": {"secretName": "mine"}}, nats={"managed": {"tls": {"secretName": "n"}}}))
    assert fleet_ca.wanted(fed) == [] and gateway.tls_secret_name(fed) == "mine"


@pytest.mark.parametrize("tls", [{}, {"secretName": "mine", "generate": True}])
def test_tls_takes_a_secret_name_or_generate_not_both_nor_neither(tls: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match=r"set either secretName .* or generate: true"):
        fleet(fleet_doc(gateway={"tls": tls}))


def test_an_issued_certificate_verifies_with_the_ca_for_its_names_only() -> None:
    authority = fleet_ca.new_authority(GENERATED, NOW)
    (want, _) = fleet_ca.wanted(GENERATED)
    issued = fleet_ca.issue(authority, want.dns_names, NOW)
    assert issued[CA_KEY] == authority.pem
    certificate = x509.load_pem_x509_certificate(issued[CERT_KEY])
    certificate.verify_directly_issued_by(authority.certificate)
    assert certificate.not_valid_after_utc - NOW < datetime.timedelta(days=91)
    context = ssl.create_default_context(cadata=authority.pem.decode())
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "fleetflow ns1/cold CA"),),)
    # The CA Secret round-trips: what the operator stores is what it signs with on the next reconcile.
    secret = fleet_ca.ca_secret(GENERATED, authority)
    assert secret["type"] == "kubernetes.io/tls" and secret["metadata"]["name"] == "cold-ca"
    assert fleet_ca.load_authority(secret).pem == authority.pem


def test_a_certificate_is_renewed_at_two_thirds_of_its_lifetime_and_when_its_names_or_ca_change() -> None:
    authority = fleet_ca.new_authority(GENERATED, NOW)
    (_, want) = fleet_ca.wanted(GENERATED)
    secret = as_secret(fleet_ca.issue(authority, want.dns_names, NOW))
    assert fleet_ca.renewal_reason(None, authority, want.dns_names, NOW) == "no certificate yet"
    assert fleet_ca.renewal_reason(secret, authority, want.dns_names, NOW + datetime.timedelta(days=59)) is None
    due = fleet_ca.renewal_reason(secret, authority, want.dns_names, NOW + datetime.timedelta(days=60))
    assert due is not None and due.startswith("two thirds of its lifetime passed")
    fewer = tuple(n for n in want.dns_names if n != "grpc.example.com")
    assert fleet_ca.renewal_reason(secret, authority, fewer, NOW) == "the names it must hold changed"
    another = fleet_ca.new_authority(GENERATED, NOW)
    assert fleet_ca.renewal_reason(secret, another, want.dns_names, NOW) == "not issued by the fleet's CA"


def test_a_ca_secret_without_a_matching_key_is_refused_naming_it_never_its_content() -> None:
    authority, other = fleet_ca.new_authority(GENERATED, NOW), fleet_ca.new_authority(GENERATED, NOW)
    mixed = fleet_ca.ca_secret(GENERATED, authority)
    mixed["data"][KEY_KEY] = fleet_ca.ca_secret(GENERATED, other)["data"][KEY_KEY]
    with pytest.raises(
        fleet_ca.CertificateError, match=r"'cold-ca': 'tls\.key' is not the key of the certificate"
    ) as e:
        fleet_ca.load_authority(mixed)
    assert "PRIVATE KEY" not in str(e.value) and mixed["data"][KEY_KEY] not in str(e.value)
    with pytest.raises(fleet_ca.CertificateError, match=r"'cold-ca' lacks key 'tls\.key'"):
        fleet_ca.load_authority({"metadata": {"name": "cold-ca"}, "data": {CERT_KEY: mixed["data"][CERT_KEY]}})


def test_an_admins_rsa_ca_put_there_first_signs_the_certificates() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example corp devices CA")])
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA256())
    )  # fmt: skip
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    authority = fleet_ca.load_authority(
        {"metadata": {"name": "cold-ca"}, **as_secret({CERT_KEY: pem, KEY_KEY: pem_key})}
    )
    (want, _) = fleet_ca.wanted(GENERATED)
    issued = fleet_ca.issue(authority, want.dns_names, NOW)
    x509.load_pem_x509_certificate(issued[CERT_KEY]).verify_directly_issued_by(certificate)
    assert issued[CA_KEY] == pem
    assert fleet_ca.renewal_reason(as_secret(issued), authority, want.dns_names, NOW) is None
