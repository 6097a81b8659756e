"""A component's pod overrides (`spec.<component>.pod`) applied to its rendered Deployment or StatefulSet: size,
placement, spread, priority, pull secrets, metadata and, last, the JSON-patch escape hatch."""

import copy
from collections.abc import Sequence
from typing import Any

import jsonpatch

from fleetflow.api.core import TopologySpreadConstraint
from fleetflow.api.overrides import PodOverrides, ServiceOverrides
from fleetflow.operator.builders.common import JsonObject

SPREAD_KEYS = ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
# Where each component's overrides are in its resource's spec, for messages.
FIELDS = {
    "gateway": "spec.gateway.pod",
    "nats": "spec.nats.managed.pod",
    "processor": "spec.processor.pod",
    "writer": "spec.writer.pod",
    "appapi": "spec.api.pod",
}


class PatchError(ValueError):
    """A `pod.patches` operation that does not apply to the rendered workload; the message names the field and
    why."""


def default_spread(selector: dict[str, str]) -> list[JsonObject]:
    """One pod per node and zones balanced where the cluster allows it; never a reason to stay Pending."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(selector)},
        }
        for key in SPREAD_KEYS
    ]


def _spread(constraints: list[TopologySpreadConstraint], selector: dict[str, str]) -> list[JsonObject]:
    rendered = []
    for constraint in constraints:
        item = constraint.to_k8s()
        item.setdefault("labelSelector", {"matchLabels": dict(selector)})
        rendered.append(item)
    return rendered


def pull_secrets_of(operator_secrets: Sequence[str], overrides: PodOverrides) -> list[JsonObject]:
    """The operator's pull secrets (the chart's `imagePullSecrets`) and the component's own, each once."""
    names = [*operator_secrets, *(ref.name for ref in overrides.image_pull_secrets or ())]
    return [{"name": name} for name in dict.fromkeys(names)]


def _shape_pod(pod: JsonObject, component: str, overrides: PodOverrides, selector: dict[str, str]) -> None:
    spec = pod["spec"]
    if overrides.resources is not None:
        for container in spec["containers"]:
            if container["name"] == component:
                container["resources"] = overrides.resources.to_k8s()
    if overrides.node_selector:
        spec["nodeSelector"] = dict(overrides.node_selector)
    if overrides.tolerations:
        spec["tolerations"] = [t.to_k8s() for t in overrides.tolerations]
    if overrides.affinity is not None:
        spec["affinity"] = overrides.affinity.to_k8s()
    if overrides.topology_spread_constraints is not None:
        spec["topologySpreadConstraints"] = _spread(overrides.topology_spread_constraints, selector)
    if overrides.priority_class_name:
        spec["priorityClassName"] = overrides.priority_class_name
    meta = pod.setdefault("metadata", {})
    # Validation refuses the operator's own keys, so merging can never move a pod out of its selector.
    meta["labels"] = {**(overrides.labels or {}), **meta.get("labels", {})}
    if overrides.annotations:
        meta["annotations"] = {**overrides.annotations, **meta.get("annotations", {})}


def _patched(workload: JsonObject, component: str, overrides: PodOverrides) -> JsonObject:
    if not overrides.patches:
        return workload
    operations: list[dict[str, Any]] = [op.to_rfc6902() for op in overrides.patches]
    try:
        result: JsonObject = jsonpatch.apply_patch(workload, operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise PatchError(
            f"{FIELDS[component]}.patches: {exc} (paths are JSON pointers into the rendered {workload['kind']}, "
            "e.g. /spec/template/spec/containers/0/env/-)"
        ) from None
    return result


def shaped(
    workload: JsonObject,
    component: str,
    overrides: PodOverrides,
    selector: dict[str, str],
    pull_secrets: Sequence[str] = (),
) -> JsonObject:
    """A copy of `workload` (a Deployment or StatefulSet) with the component's overrides applied."""
    result = copy.deepcopy(workload)
    pod = result["spec"]["template"]
    pod["spec"].setdefault("topologySpreadConstraints", default_spread(selector))
    secrets = pull_secrets_of(pull_secrets, overrides)
    if secrets:
        pod["spec"]["imagePullSecrets"] = secrets
    _shape_pod(pod, component, overrides, selector)
    return _patched(result, component, overrides)


def published(service: JsonObject, overrides: ServiceOverrides) -> JsonObject:
    """A copy of `service` with its type, annotations and load-balancer settings from `overrides`."""
    result = copy.deepcopy(service)
    spec = result["spec"]
    spec["type"] = overrides.type
    if overrides.annotations:
        result["metadata"]["annotations"] = dict(overrides.annotations)
    if overrides.load_balancer_source_ranges:
        spec["loadBalancerSourceRanges"] = list(overrides.load_balancer_source_ranges)
    if overrides.load_balancer_class:
        spec["loadBalancerClass"] = overrides.load_balancer_class
    if overrides.external_traffic_policy:
        spec["externalTrafficPolicy"] = overrides.external_traffic_policy
    return result
