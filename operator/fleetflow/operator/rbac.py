"""Exactly the API access the operator uses, as PolicyRules; the chart's ClusterRole is held against this."""

from typing import Any

from fleetflow.api import GROUP

# list and watch: a change to a child (deleted, edited, its pods ready) reconciles its owner at once.
CHILD_VERBS = ["get", "list", "watch", "create", "patch", "delete"]

RULES: list[dict[str, Any]] = [
    # The custom resources: kopf lists and watches them, patches finalizers and its annotations.
    {"apiGroups": [GROUP], "resources": ["devicefleets", "pipelines"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": ["devicefleets/status", "pipelines/status"], "verbs": ["get", "patch"]},
    # Children's ownerReferences set blockOwnerDeletion, which the API server (with the OwnerReferencesPermission-
    # Enforcement admission plugin, on by default in OpenShift) allows only with `update` on the owner's finalizers.
    {"apiGroups": [GROUP], "resources": ["devicefleets/finalizers", "pipelines/finalizers"], "verbs": ["update"]},
    # The children, created and patched back to the spec, deleted when the spec stops asking for them.
    {"apiGroups": [""], "resources": ["configmaps", "services", "secrets"], "verbs": CHILD_VERBS},
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": CHILD_VERBS},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": CHILD_VERBS},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": CHILD_VERBS},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies", "ingresses"], "verbs": CHILD_VERBS},
    # Gateway API routes to the gateway, and the parent Gateways' listeners that say where devices reach them.
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes", "grpcroutes"], "verbs": CHILD_VERBS},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways"], "verbs": ["get"]},
    # A managed NATS's volumes: expanded in place when storageSize grows, where their StorageClass allows it.
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "patch"]},
    {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get"]},
    # kopf: events about handler outcomes, the namespaces to watch, and the CRDs it serves.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
]

# Leader election among the operator's replicas, on one Lease in the operator's own namespace only.
LEADER_ELECTION_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch"]},
]
