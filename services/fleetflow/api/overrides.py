"""What a cluster admin may change in the pods and Services the operator creates for a component (gateway, NATS,
processor, writer). Local mode (`fleetflow up`) has no pods and ignores all of it."""

from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, model_validator

from fleetflow.api.common import Model
from fleetflow.api.core import (
    Affinity,
    Cidr,
    LocalObjectReference,
    ResourceRequirements,
    Toleration,
    TopologySpreadConstraint,
)

# The operator's own labels and annotations: selectors and rollouts depend on them, so a pod must keep them.
RESERVED_PREFIXES = ("app.kubernetes.io/", "fleetflow.io/")
_RESERVED_RULE = "self.all(k, !k.startsWith('app.kubernetes.io/') && !k.startsWith('fleetflow.io/'))"


def _unreserved(what: str) -> Any:
    def check(keys: dict[str, str]) -> dict[str, str]:
        taken = sorted(k for k in keys if k.startswith(RESERVED_PREFIXES))
        if taken:
            raise ValueError(
                f"{what} {', '.join(taken)}: keys under {' and '.join(RESERVED_PREFIXES)} are the operator's own "
                "(its selectors and rollouts use them); use another prefix"
            )
        return keys

    return check


def _keys_schema(what: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "x-kubernetes-validations": [
            {"rule": _RESERVED_RULE, "message": f"{what} under app.kubernetes.io/ and fleetflow.io/ are the operator's"}
        ],
    }


PodLabels = Annotated[
    dict[str, str], AfterValidator(_unreserved("pod labels")), WithJsonSchema(_keys_schema("pod labels"))
]
PodAnnotations = Annotated[
    dict[str, str], AfterValidator(_unreserved("pod annotations")), WithJsonSchema(_keys_schema("pod annotations"))
]


VALUE_OPS = ("add", "replace", "test")
FROM_OPS = ("move", "copy")


class JsonPatchOperation(Model):
    """One RFC 6902 operation, applied to the rendered Deployment or StatefulSet after everything else."""

    op: Literal["add", "remove", "replace", "move", "copy", "test"]
    path: str = Field(
        pattern=r"^(/([^/~]|~[01])*)*$", description="A JSON pointer, e.g. /spec/template/spec/hostNetwork."
    )
    value: Any = Field(default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    from_: str | None = Field(default=None, alias="from", pattern=r"^(/([^/~]|~[01])*)*$")

    @model_validator(mode="after")
    def _operands(self) -> Self:
        if self.op in VALUE_OPS and "value" not in self.model_fields_set:
            raise ValueError(f"patch op {self.op!r} at {self.path!r} needs a value")
        if self.op in FROM_OPS and self.from_ is None:
            raise ValueError(f"patch op {self.op!r} at {self.path!r} needs 'from' (the JSON pointer to take from)")
        return self

    def to_rfc6902(self) -> dict[str, Any]:
        """The operation as jsonpatch takes it; `value: null` stays a value (to_k8s would drop it)."""
        operation: dict[str, Any] = {"op": self.op, "path": self.path}
        if self.op in VALUE_OPS:
            operation["value"] = self.value
        if self.op in FROM_OPS:
            operation["from"] = self.from_
        return operation


class PodOverrides(Model):
    """Placement, size and metadata of one component's pods. `resources` replaces the operator's defaults for
    the component's main container; `imagePullSecrets` are added to the operator's own."""

    resources: ResourceRequirements | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    affinity: Affinity | None = None
    topology_spread_constraints: list[TopologySpreadConstraint] | None = Field(
        default=None,
        description="Replace the default spread (one pod per node where possible, zones balanced). A constraint "
        "without labelSelector selects the component's own pods.",
    )
    priority_class_name: str | None = Field(default=None, min_length=1, max_length=253)
    image_pull_secrets: list[LocalObjectReference] | None = None
    labels: PodLabels | None = None
    annotations: PodAnnotations | None = None
    patches: list[JsonPatchOperation] | None = Field(
        default=None,
        description="The escape hatch: JSON patch operations on the rendered workload, for what no field covers. "
        "A patch that does not apply is reported in the resource's status and nothing of the component changes.",
    )


class ServiceOverrides(Model):
    """How a component's Service is published."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.loadBalancerSourceRanges) || (has(self.type) && self.type == 'LoadBalancer')",
                    "message": "loadBalancerSourceRanges needs type LoadBalancer",
                },
                {
                    "rule": "!has(self.externalTrafficPolicy) || (has(self.type) && self.type != 'ClusterIP')",
                    "message": "externalTrafficPolicy needs type NodePort or LoadBalancer",
                },
            ]
        }
    )

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    annotations: dict[str, str] | None = None
    load_balancer_source_ranges: list[Cidr] | None = Field(
        default=None, description="Client address ranges a LoadBalancer admits (type LoadBalancer only)."
    )
    load_balancer_class: str | None = Field(default=None, min_length=1)
    external_traffic_policy: Literal["Cluster", "Local"] | None = Field(
        default=None, description="Local keeps the devices' source addresses (type NodePort or LoadBalancer)."
    )

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> Self:
        if self.load_balancer_source_ranges and self.type != "LoadBalancer":
            raise ValueError(f"loadBalancerSourceRanges needs type LoadBalancer, not {self.type!r}")
        if self.external_traffic_policy and self.type == "ClusterIP":
            raise ValueError("externalTrafficPolicy needs type NodePort or LoadBalancer, not 'ClusterIP'")
        return self

    @property
    def exposed(self) -> bool:
        return self.type != "ClusterIP"


# Spec fields that only shape Kubernetes objects. Service configuration leaves them out, so that placing a pod
# or publishing a Service never changes (and so never restarts) a service, least of all another component's.
CLUSTER_ONLY_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "DeviceFleet": (
        ("gateway", "pod"),
        ("gateway", "service"),
        ("gateway", "ingress"),
        ("gateway", "routes"),
        ("gateway", "tls"),
        ("nats", "managed", "pod"),
        ("nats", "managed", "mqttService"),
        ("networkPolicy",),
        ("api",),
    ),
    "Pipeline": (("processor", "pod"), ("writer", "pod")),
}


def without_cluster_fields(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a dumped spec (camelCase keys) without the fields that only shape Kubernetes objects."""
    trimmed: dict[str, Any] = _copy_dicts(spec)
    for *parents, leaf in CLUSTER_ONLY_FIELDS.get(kind, ()):
        node: Any = trimmed
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return trimmed


def _copy_dicts(node: Any) -> Any:
    return {k: _copy_dicts(v) for k, v in node.items()} if isinstance(node, dict) else node


HOST_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class IngressRoute(Model):
    """One host of the gateway's Ingress. With `tlsSecretName` the Ingress terminates TLS with the certificate in
    that Secret (`tls.crt`, `tls.key`; cert-manager can fill it)."""

    host: str = Field(pattern=HOST_PATTERN, max_length=253, description="e.g. telemetry.example.com")
    tls_secret_name: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    annotations: dict[str, str] | None = Field(
        default=None,
        description="On this Ingress only, e.g. nginx.ingress.kubernetes.io/backend-protocol: GRPC for gRPC.",
    )


class IngressSpec(Model):
    """Publishes the gateway's HTTP and gRPC through an Ingress controller: one Ingress per protocol, since
    controllers tell a gRPC backend apart by an annotation on the whole Ingress."""

    class_name: str | None = Field(default=None, min_length=1, description="The IngressClass, e.g. nginx.")
    annotations: dict[str, str] | None = Field(
        default=None, description="On both Ingresses, e.g. cert-manager.io/cluster-issuer."
    )
    http: IngressRoute | None = None
    grpc: IngressRoute | None = None


SECTION_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class GatewayParentRef(Model):
    """A Gateway (gateway.networking.k8s.io/v1) the routes attach to; its listeners decide ports and TLS."""

    name: str = Field(min_length=1, max_length=253, description="The Gateway's name.")
    namespace: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="The Gateway's namespace; unset: the fleet's. Its listeners must allow routes from the fleet's.",
    )
    section_name: str | None = Field(
        default=None, pattern=SECTION_NAME_PATTERN, max_length=253, description="One listener of the Gateway, by name."
    )
    port: int | None = Field(default=None, ge=1, le=65535, description="The listeners on this port only.")


class RouteHosts(Model):
    hostnames: list[Annotated[str, Field(pattern=HOST_PATTERN, max_length=253)]] = Field(
        min_length=1, max_length=16, description="e.g. telemetry.example.com"
    )


class GatewayRoutesSpec(Model):
    """Publishes the gateway's HTTP (WebSocket sessions included) as an HTTPRoute and its gRPC as a GRPCRoute,
    attached to a Gateway an admin runs (Gateway API v1)."""

    parent_refs: list[GatewayParentRef] = Field(min_length=1, max_length=32)
    http: RouteHosts | None = None
    grpc: RouteHosts | None = None
