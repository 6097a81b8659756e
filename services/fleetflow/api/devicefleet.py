"""The DeviceFleet resource: how a fleet of devices connects, authenticates, and is buffered in JetStream."""

import re
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.config import JsonDict

from fleetflow.api import identifiers, quantities
from fleetflow.api.common import Condition, Duration, Metadata, Model, SecretKeyRef, Size
from fleetflow.api.core import NetworkPolicyPeer
from fleetflow.api.overrides import GatewayRoutesSpec, IngressSpec, PodOverrides, ServiceOverrides
from fleetflow.api.sites import EdgeSite, check_unique_sites
from fleetflow.api.tls import CaSecretRef, ClientAuth, GatewayTls, TlsSecret


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"regular expression {text!r} does not compile: {exc}") from None
    return text


Regex = Annotated[str, AfterValidator(_regex), WithJsonSchema({"type": "string", "minLength": 1})]


class LabelRule(Model):
    """Devices whose id matches `match` carry `labels` (used by pipeline filters and grouped windows)."""

    match: Regex
    labels: dict[str, str]


class DeviceRules(Model):
    id_pattern: Regex = Field(
        default=identifiers.DEVICE_ID.pattern,
        description="Regular expression every device id must match, on top of the built-in safe-identifier "
        f"rule ({identifiers.DEVICE_ID_RULE}).",
    )
    labels: list[LabelRule] = Field(default_factory=list, description="Labels assigned to devices by id.")

    def labels_of(self, device: str) -> dict[str, str]:
        merged: dict[str, str] = {}
        for rule in self.labels:
            if re.search(rule.match, device):
                merged.update(rule.labels)
        return merged


class AuthSpec(Model):
    """Per-device bearer tokens derived from one fleet secret (HMAC-SHA256 of fleet and device id).

    On a cluster the secret is read from `secretRef` (default: Secret `<fleet>-device-secret`, key `secret`);
    locally it lives in `<data-dir>/secrets/<fleet>.key`."""

    mode: Literal["token"] = "token"
    secret_ref: SecretKeyRef | None = None


class RateLimit(Model):
    readings_per_second: float = Field(default=0, ge=0, description="Per device; 0 means unlimited.")
    burst: int = Field(default=10000, ge=1, description="Readings a device may send at once above the rate.")


class AutoscalingSpec(Model):
    """A HorizontalPodAutoscaler for the gateway; while set, it (not `gateway.replicas`) decides the replicas."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                    "message": "gateway.autoscaling.minReplicas must not exceed maxReplicas",
                }
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=1, le=100)
    max_replicas: int = Field(default=4, ge=1, le=100)
    target_cpu_utilization: int = Field(default=70, ge=1, le=100, description="Average CPU, percent of requests.")

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"gateway.autoscaling.minReplicas {self.min_replicas} exceeds maxReplicas {self.max_replicas}"
            )
        return self


# A body grows at most this much once the gateway encodes it for NATS: `"a":1e15,` (9 bytes) is written
# `"a":1000000000000000.0,` (23); every other part of a reading shrinks. The constant covers the batch's
# fleet, device and headers.
MESSAGE_GROWTH = 3
MESSAGE_OVERHEAD = 4096
NATS_MAX_PAYLOAD = 64 * 1024 * 1024  # nats-server refuses a larger max_payload


class GatewaySpec(Model):
    replicas: int = Field(default=1, ge=0, le=100)
    autoscaling: AutoscalingSpec | None = None
    max_batch_readings: int = Field(default=1000, ge=1, le=100000, description="Readings per request.")
    max_body_bytes: int = Field(
        default=1048576,
        ge=1024,
        le=16777216,
        description="Largest request body (HTTP), message (gRPC) or MQTT payload a device may send, in bytes. "
        "A managed NATS carries 3x this (what the largest body can grow to once encoded).",
    )
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    max_streams_per_device: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Concurrent command sessions (gRPC Connect streams and HTTP command long-polls together) per "
        "device and gateway replica; a new one beyond it replaces the device's oldest, which ends with a status "
        "that says so.",
    )
    pod: PodOverrides = Field(default_factory=PodOverrides, description="Shape the gateway pods (cluster only).")
    service: ServiceOverrides = Field(
        default_factory=ServiceOverrides,
        description="Publish the gateway's HTTP and gRPC ports (cluster only): NodePort or LoadBalancer.",
    )
    ingress: IngressSpec | None = Field(
        default=None, description="Publish the gateway's HTTP and gRPC through an Ingress controller (cluster only)."
    )
    routes: GatewayRoutesSpec | None = Field(
        default=None,
        description="Publish the gateway's HTTP and gRPC as Gateway API routes on a Gateway you run (cluster only).",
    )
    tls: GatewayTls | None = Field(
        default=None,
        description="Serve devices' HTTP and gRPC over TLS only, with this Secret's certificate or one the operator "
        "issues (cluster only); with clientAuth, devices may identify themselves with X.509 certificates.",
    )

    @property
    def client_auth(self) -> ClientAuth | None:
        """Devices' X.509 client certificates (`tls.clientAuth`), or None when the gateway asks for none."""
        return self.tls.client_auth if self.tls is not None else None

    @property
    def largest_message_bytes(self) -> int:
        """The largest NATS message a valid body of at most max_body_bytes can become."""
        return MESSAGE_GROWTH * self.max_body_bytes + MESSAGE_OVERHEAD


def max_payload_for(fleets: "list[DeviceFleet]", floor: int = 1048576) -> int:
    """The max_payload a NATS serving `fleets` needs so that no valid body is ever too large to publish."""
    return min(NATS_MAX_PAYLOAD, max([floor, *(f.spec.gateway.largest_message_bytes for f in fleets)]))


class ExternalNats(Model):
    """A NATS the fleet does not own. The services and the operator log in as `user` with the password in
    `passwordSecretRef`, and verify the server with the CA in `caSecretRef`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.user) == has(self.passwordSecretRef)",
                    "message": "nats.external.user and nats.external.passwordSecretRef go together",
                }
            ]
        }
    )

    url: str = Field(pattern=r"^(nats|tls|ws|wss)://[^\s]+$")
    user: str | None = Field(default=None, min_length=1, max_length=256)
    password_secret_ref: SecretKeyRef | None = None
    ca_secret_ref: CaSecretRef | None = Field(
        default=None, description="The CA the server's certificate is verified with (key default ca.crt)."
    )
    max_payload_bytes: int = Field(
        default=1048576,
        ge=1024,
        le=NATS_MAX_PAYLOAD,
        description="The external server's max_payload (nats-server's default is 1 MiB). gateway.maxBodyBytes "
        "must not exceed it; a body that grows past it once encoded is refused with 413 batch_too_large.",
    )

    @model_validator(mode="after")
    def _login_is_whole(self) -> Self:
        if (self.user is None) != (self.password_secret_ref is None):
            raise ValueError("nats.external.user and nats.external.passwordSecretRef go together: set both or neither")
        return self


class ManagedNats(Model):
    """NATS JetStream servers the operator runs for the fleet."""

    replicas: Literal[1, 3] = 1
    storage_size: Size = "10Gi"
    storage_class_name: str | None = None
    pod: PodOverrides = Field(default_factory=PodOverrides, description="Shape the NATS server pods.")
    mqtt_service: ServiceOverrides | None = Field(
        default=None,
        description="Publish the MQTT listener alone, as Service <fleet>-mqtt (NodePort or LoadBalancer); the "
        "client port stays inside the cluster.",
    )
    leafnode_service: ServiceOverrides | None = Field(
        default=None,
        description="How Service <fleet>-leafnodes, the leaf-node listener edge sites (spec.sites) dial, is "
        "published (NodePort or LoadBalancer for sites outside the cluster); unset: ClusterIP.",
    )
    tls: TlsSecret | None = Field(
        default=None,
        description="Client, MQTT and route connections over TLS only, with this Secret's certificate; the "
        "services and the operator verify it with its ca.crt.",
    )


class NatsSpec(Model):
    """Either the operator manages a NATS JetStream cluster (`managed`) or the fleet uses `external`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.external) && has(self.managed))",
                    "message": "set either nats.external or nats.managed, not both",
                }
            ]
        }
    )

    external: ExternalNats | None = None
    managed: ManagedNats | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if self.external is not None and self.managed is not None:
            raise ValueError("set either nats.external or nats.managed, not both")
        return self

    @property
    def managed_or_default(self) -> ManagedNats:
        return self.managed or ManagedNats()


# JetStream reserves a stream's max_bytes from the server's store when the stream is created. The telemetry
# stream may take this share of a managed NATS volume; the rest holds commands, alerts, dead letters, the MQTT
# intake, the pipelines' queues and JetStream's own overhead.
TELEMETRY_STORE_SHARE = 0.75


class StreamSpec(Model):
    """Retention of the fleet's JetStream streams."""

    max_age: Duration = "7d"
    max_bytes: Size = Field(
        default="5Gi",
        description="The telemetry stream's size limit; the oldest batches go first. With a managed NATS, at most "
        f"{TELEMETRY_STORE_SHARE:.0%} of nats.managed.storageSize.",
    )
    replicas: Literal[1, 3] = 1
    duplicate_window: Duration = Field(default="2m", description="How long a retried batch is recognised.")
    partitions: int = Field(
        default=8, ge=1, le=256, description="Telemetry partitions; processor replicas each take a share."
    )
    delete_on_removal: bool = Field(
        default=False, description="Delete the fleet's streams (and their data) when the DeviceFleet is deleted."
    )

    @property
    def max_age_seconds(self) -> float:
        return quantities.parse_duration(self.max_age)

    @property
    def duplicate_window_seconds(self) -> float:
        return quantities.parse_duration(self.duplicate_window)

    @property
    def max_bytes_value(self) -> int:
        return quantities.parse_bytes(self.max_bytes)


def _partitions(x: str) -> str:
    return f"(has({x}.streams) && has({x}.streams.partitions) ? {x}.streams.partitions : 8)"


def _intake_stopped(x: str) -> str:
    return (
        f"(has({x}.gateway) && has({x}.gateway.replicas) && {x}.gateway.replicas == 0 && !has({x}.gateway.autoscaling))"
    )


def _managed_servers(x: str) -> str:
    return f"(has({x}.nats) && has({x}.nats.managed) && has({x}.nats.managed.replicas) ? {x}.nats.managed.replicas : 1)"


def _external(x: str) -> str:
    return f"(has({x}.nats) && has({x}.nats.external))"


# Changes the API server refuses because they would lose or skip data (rules with oldSelf run on updates only).
TRANSITION_RULES: list[JsonDict] = [
    {
        # The stream would re-partition at once while the processors still read the old partitions: readings
        # would be skipped and a device's order broken. With the intake stopped (and, as docs/operator.md says,
        # the processors drained) nothing is in flight.
        "rule": f"{_partitions('self')} == {_partitions('oldSelf')} || "
        f"({_intake_stopped('oldSelf')} && {_intake_stopped('self')})",
        "message": "streams.partitions can change only while the gateway is scaled to 0 (gateway.replicas 0, no "
        "autoscaling) before and after the change: see 'Changing partitions' in docs/operator.md",
    },
    {
        # A leaving server takes the streams it holds with it.
        "rule": f"{_external('self')} || {_external('oldSelf')} || "
        f"{_managed_servers('self')} >= {_managed_servers('oldSelf')}",
        "message": "nats.managed.replicas cannot shrink: the streams on the servers that leave would be lost; see "
        "'Scaling NATS' in docs/operator.md",
    },
]


NAMESPACE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class NetworkPolicySpec(Model):
    """NetworkPolicies for the fleet's pods (its pipelines' included): every ingress is denied but devices to the
    gateway's HTTP and gRPC and to MQTT, applications to the application API, the fleet's services and the
    operator to NATS, NATS servers to each other, and metrics scrapes from `metricsNamespace`. Egress is not
    restricted."""

    enabled: bool = False
    devices: list[NetworkPolicyPeer] | None = Field(
        default=None,
        description="Where devices (or the Ingress controller or load balancer in front of them) connect from; "
        "unset: anywhere.",
    )
    applications: list[NetworkPolicyPeer] | None = Field(
        default=None,
        description="Where applications reach the application API's port from; unset: anywhere.",
    )
    metrics_namespace: str | None = Field(
        default=None,
        pattern=NAMESPACE_NAME_PATTERN,
        description="The namespace whose pods (Prometheus) may scrape the services' ops port and the NATS "
        "exporter; unset: none.",
    )
    sites: list[NetworkPolicyPeer] | None = Field(
        default=None,
        description="Where edge sites (spec.sites, or the load balancer in front of them) dial the leaf-node "
        "listener from; unset: anywhere.",
    )


class AppApiSpec(Model):
    """The application API's pods (cluster only): how many, and shaped like the other components'."""

    replicas: int = Field(default=1, ge=1, le=10, description="Stateless: any replica serves any request.")
    pod: PodOverrides = Field(default_factory=PodOverrides, description="Shape the application API pods.")


class DeviceFleetSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.streams) || !has(self.streams.replicas) || self.streams.replicas == 1 || "
                    "(has(self.nats) && (has(self.nats.external) || (has(self.nats.managed) && "
                    "has(self.nats.managed.replicas) && self.nats.managed.replicas == 3)))",
                    "message": "streams.replicas 3 needs nats.managed.replicas 3 (or an external NATS)",
                },
                {
                    "rule": "!has(self.nats) || !has(self.nats.external) || "
                    "(has(self.gateway) && has(self.gateway.maxBodyBytes) ? self.gateway.maxBodyBytes : 1048576) <= "
                    "(has(self.nats.external.maxPayloadBytes) ? self.nats.external.maxPayloadBytes : 1048576)",
                    "message": "gateway.maxBodyBytes exceeds nats.external.maxPayloadBytes: the external NATS cannot "
                    "carry the bodies devices may send",
                },
                *TRANSITION_RULES,
            ]
        }
    )

    devices: DeviceRules = Field(default_factory=DeviceRules)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    nats: NatsSpec = Field(default_factory=NatsSpec)
    streams: StreamSpec = Field(default_factory=StreamSpec)
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    api: AppApiSpec = Field(default_factory=AppApiSpec, description="The application API (cluster only).")
    sites: list[EdgeSite] = Field(
        default_factory=list,
        description="Edge sites: leaf nodes of this fleet's NATS that run on their own (docs/edge.md).",
    )

    @model_validator(mode="after")
    def _sites_unique(self) -> Self:
        check_unique_sites(self.sites)
        return self

    @model_validator(mode="after")
    def _stream_replicas_fit(self) -> Self:
        if self.nats.external is None and self.streams.replicas > self.nats.managed_or_default.replicas:
            raise ValueError(
                f"streams.replicas {self.streams.replicas} exceeds nats.managed.replicas "
                f"{self.nats.managed_or_default.replicas}: a stream cannot have more replicas than servers"
            )
        return self

    @model_validator(mode="after")
    def _bodies_fit_an_external_nats(self) -> Self:
        external, body = self.nats.external, self.gateway.max_body_bytes
        if external is not None and body > external.max_payload_bytes:
            raise ValueError(
                f"gateway.maxBodyBytes {body} exceeds nats.external.maxPayloadBytes {external.max_payload_bytes}: "
                "the external NATS could not carry the bodies devices may send; lower gateway.maxBodyBytes or "
                "raise the server's max_payload (and nats.external.maxPayloadBytes with it)"
            )
        return self

    @model_validator(mode="after")
    def _telemetry_fits_the_volume(self) -> Self:
        if self.nats.external is not None:
            return self
        storage = self.nats.managed_or_default.storage_size
        limit = quantities.parse_bytes(storage) * TELEMETRY_STORE_SHARE
        if self.streams.max_bytes_value > limit:
            raise ValueError(
                f"streams.maxBytes {self.streams.max_bytes!r} does not fit nats.managed.storageSize {storage!r}: "
                f"JetStream reserves it from the volume up front, and the telemetry stream may take at most "
                f"{TELEMETRY_STORE_SHARE:.0%} of it ({int(limit)} bytes) so the fleet's other streams fit too; "
                "lower streams.maxBytes or raise nats.managed.storageSize"
            )
        return self


class GatewayStatus(Model):
    replicas: int = 0
    ready_replicas: int = 0
    endpoints: dict[str, str] = Field(default_factory=dict)


class StreamStatus(Model):
    name: str
    messages: int = 0
    bytes: int = 0
    state: str = "Unknown"


class ComponentStatus(Model):
    name: str
    ready: bool = False
    message: str = ""


class DeviceSecretStatus(Model):
    """What the operator last saw of the device Secret: a fleet with this recorded has issued tokens, so a lost
    Secret is reported, never silently replaced."""

    name: str
    hash: str = Field(description="Changes when the Secret's keys do; the gateway pods carry it and roll with it.")
    rotation: str | None = Field(
        default=None, description="The last rotation done (the value of fleetflow.io/rotate-device-secret)."
    )
    previous_key_accepted: bool = Field(
        default=False, description="Tokens of the secret before the last rotation are still accepted."
    )


class SiteStatus(Model):
    """One edge site's link to the fleet's NATS, as the operator last saw it (docs/edge.md)."""

    name: str
    connected: bool = False
    received_bytes: int = Field(default=0, description="Bytes the hub received from the site over its current link.")
    sent_bytes: int = Field(default=0, description="Bytes the hub sent to the site over its current link.")
    backlog_messages: int = Field(
        default=0, description="Messages the site holds that the centre has not stored yet, as of the last contact."
    )


class DeviceFleetStatus(Model):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    gateway: GatewayStatus = Field(default_factory=GatewayStatus)
    streams: list[StreamStatus] = Field(default_factory=list)
    components: list[ComponentStatus] = Field(default_factory=list)
    device_secret: DeviceSecretStatus | None = None
    sites: list[SiteStatus] = Field(default_factory=list)
    sites_connected: str | None = Field(default=None, description="Edge sites connected of those declared: 1/2.")


class DeviceFleet(Model):
    api_version: Literal["fleetflow.io/v1alpha1"] = "fleetflow.io/v1alpha1"
    kind: Literal["DeviceFleet"] = "DeviceFleet"
    metadata: Metadata
    spec: DeviceFleetSpec = Field(default_factory=DeviceFleetSpec)
    status: DeviceFleetStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name
