"""TLS settings of a DeviceFleet: certificates from Secrets an admin feeds (from cert-manager, for example), or
ones the operator issues from a fleet CA it generates."""

from typing import Literal, Self

from pydantic import ConfigDict, Field, model_validator

from fleetflow.api.common import Model, ResourceName, SecretKeyRef

SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
CERT_KEY = "tls.crt"
KEY_KEY = "tls.key"
CA_KEY = "ca.crt"


class TlsSecret(Model):
    """A Secret of type kubernetes.io/tls as cert-manager writes it: `tls.crt` (the certificate, chain included),
    `tls.key` and `ca.crt`, the CA every client verifies the server with. Either `secretName` names one an admin
    feeds, or with `generate: true` the operator writes it (Secret `<fleet>-<component>-tls`) from the fleet's own
    CA (Secret `<fleet>-ca`) and renews it before it expires."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.secretName) != (has(self.generate) && self.generate)",
                    "message": "tls: set either secretName (a Secret you feed) or generate: true (the operator's CA)",
                }
            ]
        }
    )

    secret_name: str | None = Field(default=None, pattern=SECRET_NAME_PATTERN, max_length=253)
    generate: bool = Field(
        default=False,
        description="The operator issues the certificate from the fleet's CA (Secret <fleet>-ca, generated once) "
        "into Secret <fleet>-<component>-tls and renews it at two thirds of its lifetime.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.secret_name is not None) == self.generate:
            given = f"secretName {self.secret_name!r} and generate: true" if self.generate else "neither"
            raise ValueError(f"tls: {given} given; set either secretName (a Secret you feed) or generate: true")
        return self

    def name_or(self, generated: str) -> str:
        """The Secret the pods mount: the admin's, or `generated` (the operator's) with `generate: true`."""
        return self.secret_name if self.secret_name is not None else generated


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
