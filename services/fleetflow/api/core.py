"""The Kubernetes core types a DeviceFleet or Pipeline embeds to shape its pods (tolerations, affinity, spread,
resources), typed so that the CRD validates them at `kubectl apply` and the builders copy them as they are.

Field names and enums follow the Kubernetes API (core/v1 as of 1.30); fields still alpha there are left out."""

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from fleetflow.api.common import Model

# resource.Quantity as the API server parses it: 100m, 0.5, 512Mi, 1G, 2e3.
QUANTITY_PATTERN = (
    r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
QUANTITY_RULE = "a Kubernetes quantity such as 100m, 0.5, 256Mi or 2Gi"


def _quantity(value: int | str) -> int | str:
    if isinstance(value, bool) or not re.fullmatch(QUANTITY_PATTERN, str(value)):
        raise ValueError(f"quantity {value!r} is not valid: use {QUANTITY_RULE}")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]

CIDR_PATTERN = r"^[0-9a-fA-F.:]+/[0-9]{1,3}$"


def _cidr(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"CIDR {text!r} is not valid: use an address range such as 203.0.113.0/24") from None
    if "/" not in text:
        raise ValueError(f"CIDR {text!r} is not valid: add the prefix length, e.g. {text}/32")
    return text


Cidr = Annotated[str, AfterValidator(_cidr), WithJsonSchema({"type": "string", "pattern": CIDR_PATTERN})]


class ResourceRequirements(Model):
    """Kubernetes core/v1 ResourceRequirements: what a container requests and may use at most."""

    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class LocalObjectReference(Model):
    """Kubernetes core/v1 LocalObjectReference: an object in the same namespace."""

    name: str = Field(min_length=1, max_length=253)


class Toleration(Model):
    """Kubernetes core/v1 Toleration."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class LabelSelectorRequirement(Model):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(Model):
    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class NodeSelectorRequirement(Model):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] | None = None


class NodeSelectorTerm(Model):
    match_expressions: list[NodeSelectorRequirement] | None = None
    match_fields: list[NodeSelectorRequirement] | None = None


class NodeSelector(Model):
    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1)


class PreferredSchedulingTerm(Model):
    weight: int = Field(ge=1, le=100)
    preference: NodeSelectorTerm


class NodeAffinity(Model):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = None


class PodAffinityTerm(Model):
    label_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    namespaces: list[str] | None = None
    topology_key: str = Field(min_length=1)


class WeightedPodAffinityTerm(Model):
    weight: int = Field(ge=1, le=100)
    pod_affinity_term: PodAffinityTerm


class PodAffinity(Model):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = None
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = None


class Affinity(Model):
    """Kubernetes core/v1 Affinity: node affinity, pod affinity and pod anti-affinity."""

    node_affinity: NodeAffinity | None = None
    pod_affinity: PodAffinity | None = None
    pod_anti_affinity: PodAffinity | None = None


class TopologySpreadConstraint(Model):
    """Kubernetes core/v1 TopologySpreadConstraint. Without `labelSelector`, it selects the component's own pods."""

    max_skew: int = Field(ge=1)
    topology_key: str = Field(min_length=1)
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    label_selector: LabelSelector | None = None
    min_domains: int | None = Field(default=None, ge=1)
    node_affinity_policy: Literal["Honor", "Ignore"] | None = None
    node_taints_policy: Literal["Honor", "Ignore"] | None = None
    match_label_keys: list[str] | None = None


class IPBlock(Model):
    cidr: Cidr
    except_: list[Cidr] | None = Field(default=None, alias="except")


class NetworkPolicyPeer(Model):
    """Kubernetes networking/v1 NetworkPolicyPeer: pods (by label, in namespaces by label) or an address range."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None
