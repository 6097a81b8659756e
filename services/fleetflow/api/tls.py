"""TLS settings of a DeviceFleet: certificates from Secrets an admin feeds (from cert-manager, for example)."""

from typing import Literal

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


class ClientAuth(Model):
    """Mutual TLS for devices: the gateway asks each device for an X.509 certificate and verifies it against the
    fleet's device CA. A verified certificate is the device's identity (its subject CN is the device id), so it
    needs no token. `Required`: a device without one fails the TLS handshake. `Optional`: a device without one
    authenticates with its token, as without client auth."""

    mode: Literal["Optional", "Required"] = Field(
        default="Optional",
        description="Required: every device presents a certificate the CA signed. Optional: devices without one use "
        "their token.",
    )
    ca_secret_ref: CaSecretRef = Field(
        description="The CA (PEM) that signs the fleet's device certificates: a key of a Secret, `ca.crt` by default "
        "(a cert-manager CA Issuer's Secret has it)."
    )


class GatewayTls(TlsSecret):
    """The gateway's certificate for devices' HTTP and gRPC, and optionally client certificates from devices."""

    client_auth: ClientAuth | None = Field(
        default=None, description="Ask devices for X.509 client certificates and accept them as their identity."
    )
