"""Test certificates made with the `cryptography` package: a CA and server certificates it signs, written the
way cert-manager fills a kubernetes.io/tls Secret (`tls.crt`, `tls.key`, `ca.crt`)."""

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = "127.0.0.1"


def _name(*common_names: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name) for name in common_names])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, dns_names: list[str], days: float = 1) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for a server known by `dns_names` and 127.0.0.1, where tests dial it, valid
        for `days` from now."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names.append(x509.IPAddress(ipaddress.ip_address(LOOPBACK)))
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]  # routes are both
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(dns_names[0] if dns_names else LOOPBACK))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def issue_client(self, common_name: str, *more_names: str) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for a client, a device for instance, whose subject CN is `common_name` (and,
        for a certificate that should be refused, further CNs `more_names`)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, *more_names))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def client_files(self, folder: Path, common_name: str) -> tuple[Path, Path]:
        """The client certificate and key of `issue_client` as files in `folder`: (certificate, key)."""
        certificate, key = self.issue_client(common_name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{common_name}.crt").write_bytes(certificate)
        (folder / f"{common_name}.key").write_bytes(key)
        return folder / f"{common_name}.crt", folder / f"{common_name}.key"

    def tls_secret_files(self, folder: Path, dns_names: list[str]) -> Path:
        """`tls.crt`, `tls.key` and `ca.crt` in `folder`, as a mounted kubernetes.io/tls Secret."""
        certificate, key = self.issue(dns_names)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tls.crt").write_bytes(certificate)
        (folder / "tls.key").write_bytes(key)
        (folder / "ca.crt").write_bytes(self.pem)
        return folder

    def tls_secret(self, name: str, namespace: str, dns_names: list[str], days: float = 1) -> dict[str, object]:
        """The same as a Secret object, for the API server."""
        certificate, key = self.issue(dns_names, days)
        data = {"tls.crt": certificate, "tls.key": key, "ca.crt": self.pem}
        return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": namespace},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}  # fmt: skip


CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def new_authority(common_name: str = "fleetflow test CA") -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, certificate)
