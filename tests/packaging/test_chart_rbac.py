"""The chart grants the operator exactly what fleetflow.operator.rbac.RULES says it uses: no more, no less."""

from collections.abc import Iterable
from typing import Any

import pytest

from fleetflow.operator.rbac import LEADER_ELECTION_RULES, RULES
from tests.packaging import chart

Grant = tuple[str, str, str]  # (API group, resource, verb)

# Where each resource the operator touches lives: cluster-scoped ones can only be granted by a ClusterRole.
CLUSTER_SCOPED = {
    ("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions"), ("storage.k8s.io", "storageclasses")
}  # fmt: skip
NAMESPACED = {
    ("fleetflow.io", "devicefleets"), ("fleetflow.io", "pipelines"),
    ("fleetflow.io", "devicefleets/status"), ("fleetflow.io", "pipelines/status"),
    ("fleetflow.io", "devicefleets/finalizers"), ("fleetflow.io", "pipelines/finalizers"),
    ("", "configmaps"), ("", "services"), ("", "secrets"), ("", "events"),
    ("apps", "deployments"), ("apps", "statefulsets"),
    ("policy", "poddisruptionbudgets"), ("autoscaling", "horizontalpodautoscalers"),
    ("networking.k8s.io", "networkpolicies"), ("networking.k8s.io", "ingresses"),
    ("gateway.networking.k8s.io", "httproutes"), ("gateway.networking.k8s.io", "grpcroutes"),
    ("gateway.networking.k8s.io", "gateways"),
    ("coordination.k8s.io", "leases"), ("", "persistentvolumeclaims"),
}  # fmt: skip
LEADER_ELECTION_ROLE = "ff-fleetflow-operator-leader-election"
TWO_NAMESPACES = ["plant-a", "plant-b"]


def grants(rules: Iterable[dict[str, Any]]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def used() -> set[Grant]:
    return grants(RULES)


def cluster_scoped(found: set[Grant]) -> set[Grant]:
    return {g for g in found if (g[0], g[1]) in CLUSTER_SCOPED}


def test_every_resource_the_operator_uses_is_known_to_be_namespaced_or_cluster_scoped() -> None:
    unknown = {(g[0], g[1]) for g in used()} - CLUSTER_SCOPED - NAMESPACED
    assert not unknown, f"classify {sorted(unknown)} in CLUSTER_SCOPED or NAMESPACED of this test"


def test_watching_every_namespace_grants_exactly_the_rules_in_one_cluster_role() -> None:
    found = chart.objects()
    role = chart.one(found, "ClusterRole")
    granted = grants(role["rules"])
    assert granted == used(), f"missing {sorted(used() - granted)}; not used {sorted(granted - used())}"
    assert not [
        o for o in found if o["kind"] in ("Role", "RoleBinding") and o["metadata"]["name"] != LEADER_ELECTION_ROLE
    ]
    binding = chart.one(found, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}  # fmt: skip
    account = chart.one(found, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": chart.NAMESPACE}]


def test_watching_some_namespaces_grants_namespaced_rules_only_there() -> None:
    found = chart.objects({"operator": {"watchNamespaces": TWO_NAMESPACES}})
    cluster = grants(chart.one(found, "ClusterRole")["rules"])
    assert cluster == cluster_scoped(used()), "only what cannot be granted in a namespace"
    account = chart.one(found, "ServiceAccount")["metadata"]["name"]
    roles = [o for o in found if o["kind"] == "Role" and o["metadata"]["name"] != LEADER_ELECTION_ROLE]
    bindings = [o for o in found if o["kind"] == "RoleBinding" and o["metadata"]["name"] != LEADER_ELECTION_ROLE]
    assert sorted(r["metadata"]["namespace"] for r in roles) == TWO_NAMESPACES
    for role in roles:
        assert grants(role["rules"]) == used() - cluster_scoped(used()), role["metadata"]["namespace"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": chart.NAMESPACE}]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == TWO_NAMESPACES


@pytest.mark.parametrize("values", [None, {"operator": {"watchNamespaces": TWO_NAMESPACES}}], ids=["all", "two"])
def test_leader_election_is_granted_on_leases_in_the_release_namespace_only(values: dict[str, Any] | None) -> None:
    found = chart.objects(values)
    role = chart.one(found, "Role", LEADER_ELECTION_ROLE)
    assert role["metadata"]["namespace"] == chart.NAMESPACE
    assert grants(role["rules"]) == grants(LEADER_ELECTION_RULES)
    binding = chart.one(found, "RoleBinding", LEADER_ELECTION_ROLE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEADER_ELECTION_ROLE}
    account = chart.one(found, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": chart.NAMESPACE}]
    for other in (o for o in found if o["kind"] in ("Role", "ClusterRole") and o is not role):
        assert not {g for g in grants(other["rules"]) if g[1] == "leases"}, other["metadata"]["name"]


@pytest.mark.parametrize("values", [None, {"operator": {"watchNamespaces": TWO_NAMESPACES}}], ids=["all", "two"])
def test_no_wildcards(values: dict[str, Any] | None) -> None:
    for obj in chart.objects(values):
        for rule in obj.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), f"{obj['kind']}/{obj['metadata']['name']}: {rule}"


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    kinds = {o["kind"] for o in chart.objects({"rbac": {"create": False}})}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
