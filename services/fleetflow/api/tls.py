"""TLS settings of a DeviceFleet: certificates from Secrets an admin feeds (from cert-manager, for example)."""

from pydantic import Field

from fleetflow.api.common import Model, ResourceName, SecretKeyRef

SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
CERT_KEY = "tls.crt"
KEY_KEY = "tls.key"
CA_KEY = "ca.crt"


class TlsSecret(Model):
    """A Secret of type kubernetes.io/tls as cert-manager writes it: `tls.crt` (the certificate, chain included),
    `tls.key` and `ca.crt`, the CA every client verifies the server with."""

    secret_name: str = Field(pattern=SECRET_NAME_PATTERN, max_length=253)


class CaSecretRef(SecretKeyRef):
    """The key of a Secret holding a PEM CA bundle."""

    name: ResourceName
    key: str = Field(default=CA_KEY, min_length=1, max_length=253)
