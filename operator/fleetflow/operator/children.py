"""The operator's children as watch targets. A change to a child (deleted, edited, its pods turned ready) is a
change to its custom resource, which is reconciled at once rather than at the next resync."""

from collections.abc import Mapping
from typing import Any

from fleetflow.api import GROUP, VERSION
from fleetflow.operator import conditions
from fleetflow.operator.builders.common import MANAGED_BY
from fleetflow.operator.kube import JsonObject

# (group, version, plural) of every kind the builders create.
CHILD_RESOURCES = [
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("", "v1", "secrets"),
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("networking.k8s.io", "v1", "ingresses"),
]
# Every child carries it; the watches select on it, so other workloads' churn never reaches a handler.
MANAGED_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY}
OWNER_KINDS = ("DeviceFleet", "Pipeline")


def owner_of(child: Mapping[str, Any]) -> JsonObject | None:
    """A stub of the DeviceFleet or Pipeline that controls `child` (apiVersion, kind, name, namespace, uid:
    enough to read it afresh), or None for an object no custom resource of ours controls."""
    meta = child.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("apiVersion") == f"{GROUP}/{VERSION}" and ref.get("kind") in OWNER_KINDS:
            return {
                "apiVersion": ref["apiVersion"],
                "kind": ref["kind"],
                "metadata": {"name": ref["name"], "namespace": meta.get("namespace"), "uid": ref.get("uid")},
            }
    return None


def pause_not_yet_reported(body: Mapping[str, Any]) -> bool:
    """True when the `fleetflow.io/paused` annotation and the Paused condition disagree: a pause or a resume
    the operator has not acted on. (kopf's change detection does not see the operator's own annotations.)"""
    paused = conditions.is_paused(dict(body))
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == conditions.PAUSED:
            return (cond.get("status") == "True") != paused
    return paused  # never reconciled yet: only a pause needs acting on; a create handler follows anyway
