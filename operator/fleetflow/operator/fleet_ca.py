"""The fleet's own CA and the server certificates it issues, for `tls: {generate: true}`.

The CA lives in Secret `<fleet>-ca`, owned by the DeviceFleet: created once, never rewritten (every device trusts
it); one an admin created there first (`tls.crt`, `tls.key`; EC or RSA) is used as it is. Each generated
certificate lives in a kubernetes.io/tls Secret (`tls.crt`, `tls.key`, `ca.crt`, as cert-manager writes one) that
the operator reissues when it reaches two thirds of its lifetime, when the names it must hold change, or when it
was not signed by the fleet's CA; the pods that mount it roll with it (tls_secrets.stamped). Private keys never
leave the Secrets: no message or log names more than a Secret and a key. Every function that looks at validity
takes `now`, so tests need no clock of their own."""

import base64
import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetflow.api import DeviceFleet
from fleetflow.api.tls import CA_KEY, CERT_KEY, KEY_KEY, TlsSecret
from fleetflow.operator.builders import exposure, gateway, nats
from fleetflow.operator.builders.common import JsonObject, fleet_labels, metadata, namespace_of

CA_LIFETIME = datetime.timedelta(days=3650)  # never renewed: devices carry it
CERTIFICATE_LIFETIME = datetime.timedelta(days=90)
RENEW_AT = 2 / 3  # of a certificate's lifetime, as cert-manager's default
# Tolerates a node whose clock is a little behind the operator's.
BACKDATE = datetime.timedelta(minutes=5)
SERVER_USAGE = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]  # NATS routes are both
KEY_USAGE_FLAGS = dict(content_commitment=False, data_encipherment=False, key_agreement=False,
                       encipher_only=False, decipher_only=False)  # fmt: skip


class CertificateError(ValueError):
    """The fleet's CA Secret, or a Secret the operator would write a certificate into, cannot be used; the message
    names the Secret and the key, never a value."""

    reason = "TlsSecretInvalid"


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey  # the operator makes EC keys; an admin's CA may be RSA
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Wanted:
    """A certificate the spec asks the operator to issue: into which Secret, for which component and names."""

    secret_name: str
    component: str
    field: str  # the spec field that asked for it, for messages
    dns_names: tuple[str, ...]


def ca_secret_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-ca"


def _generates(certificate: TlsSecret | None) -> bool:
    return certificate is not None and certificate.generate


def gateway_dns_names(fleet: DeviceFleet) -> list[str]:
    """The gateway Service's names inside the cluster and the hosts devices reach it by from outside."""
    service, namespace = gateway.name(fleet), namespace_of(fleet)
    inside = [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]
    return list(dict.fromkeys([*inside, *exposure.hosts(fleet)]))


def wanted(fleet: DeviceFleet) -> list[Wanted]:
    """The certificates the operator issues for this fleet; empty when no `tls` asks for `generate: true`."""
    found = []
    nats_secret = nats.tls_secret_name(fleet)
    if _generates(nats.tls(fleet)) and nats_secret is not None:
        names = tuple(nats.tls_dns_names(fleet))
        found.append(Wanted(nats_secret, "nats", "spec.nats.managed.tls.generate", names))
    gateway_secret = gateway.tls_secret_name(fleet)
    if _generates(fleet.spec.gateway.tls) and gateway_secret is not None:
        names = tuple(gateway_dns_names(fleet))
        found.append(Wanted(gateway_secret, "gateway", "spec.gateway.tls.generate", names))
    return found


# --- the CA -----------------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def new_authority(fleet: DeviceFleet, now: datetime.datetime) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"fleetflow {namespace_of(fleet)}/{fleet.name} CA")
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, key_encipherment=False,
                          **KEY_USAGE_FLAGS)  # fmt: skip
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, certificate)


def ca_secret(fleet: DeviceFleet, authority: Authority) -> JsonObject:
    """The CA as a kubernetes.io/tls Secret (its certificate also under ca.crt, where clients look for it)."""
    data = {CERT_KEY: authority.pem, KEY_KEY: _pem_key(authority.key), CA_KEY: authority.pem}
    return _tls_secret(ca_secret_name(fleet), fleet, "ca", data)


def load_authority(secret: JsonObject) -> Authority:
    """The CA in a Secret `ca_secret` wrote; CertificateError when it is not one."""
    name = secret["metadata"]["name"]
    data = secret.get("data") or {}
    try:
        certificate = x509.load_pem_x509_certificate(base64.b64decode(data[CERT_KEY]))
        key = serialization.load_pem_private_key(base64.b64decode(data[KEY_KEY]), password=None)
    except (KeyError, ValueError) as exc:
        missing = f"lacks key {exc}" if isinstance(exc, KeyError) else "holds no PEM certificate and key"
        raise CertificateError(f"fleet CA Secret {name!r} {missing} (keys {CERT_KEY!r} and {KEY_KEY!r})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"fleet CA Secret {name!r}: {KEY_KEY!r} is a {type(key).__name__}; use an EC or RSA key")
    if key.public_key() != certificate.public_key():
        raise CertificateError(
            f"fleet CA Secret {name!r}: {KEY_KEY!r} is not the key of the certificate in {CERT_KEY!r}"
        )
    return Authority(key, certificate)


# --- server certificates ----------------------------------------------------------------------------------


def issue(authority: Authority, dns_names: tuple[str, ...], now: datetime.datetime) -> dict[str, bytes]:
    """`tls.crt`, `tls.key` and `ca.crt` of a fresh server certificate for `dns_names`."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, key_encipherment=True,
                          **KEY_USAGE_FLAGS)  # fmt: skip
    ca_key_id = x509.SubjectKeyIdentifier.from_public_key(authority.key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage(SERVER_USAGE), critical=False)
        .add_extension(usage, critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    return {CERT_KEY: certificate.public_bytes(serialization.Encoding.PEM), KEY_KEY: _pem_key(key),
            CA_KEY: authority.pem}  # fmt: skip


def certificate_secret(fleet: DeviceFleet, want: Wanted, data: dict[str, bytes]) -> JsonObject:
    return _tls_secret(want.secret_name, fleet, want.component, data)


def renewal_reason(
    secret: JsonObject | None, authority: Authority, dns_names: tuple[str, ...], now: datetime.datetime
) -> str | None:
    """Why the certificate in `secret` must be issued anew, or None while it serves as it is."""
    data = (secret or {}).get("data") or {}
    if not all(key in data for key in (CERT_KEY, KEY_KEY, CA_KEY)):
        return "no certificate yet"
    try:
        certificate = x509.load_pem_x509_certificate(base64.b64decode(data[CERT_KEY]))
    except ValueError:
        return f"{CERT_KEY} holds no PEM certificate"
    if base64.b64decode(data[CA_KEY]) != authority.pem or not _signed_by(certificate, authority):
        return "not issued by the fleet's CA"
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "the certificate names no host"
    if sorted(names.get_values_for_type(x509.DNSName)) != sorted(dns_names):
        return "the names it must hold changed"
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    renew_at = start + (end - start) * RENEW_AT
    if now >= renew_at:
        return f"two thirds of its lifetime passed (renewal due {renew_at:%Y-%m-%dT%H:%M:%SZ})"
    return None


def _signed_by(certificate: x509.Certificate, authority: Authority) -> bool:
    try:
        certificate.verify_directly_issued_by(authority.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _tls_secret(name: str, fleet: DeviceFleet, component: str, data: dict[str, bytes]) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": metadata(name, namespace_of(fleet), fleet_labels(fleet, component)),
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }
