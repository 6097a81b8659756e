"""Unit tests of the pieces the reconcile is made of: drift detection, conditions, readiness, RBAC rules."""

from pathlib import Path

import pytest
import yaml
from kubernetes.config import kube_config

from fleetflow.api.devicefleet import DeviceFleetStatus
from fleetflow.operator import conditions, kube, rbac
from fleetflow.operator.apply import covers, drift_patch
from fleetflow.operator.conditions import Outcome, Problem
from fleetflow.operator.handlers import connection_info
from fleetflow.operator.readiness import workload


def test_server_defaults_are_not_drift_but_changed_values_are() -> None:
    desired = {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "gateway", "image": "a"}]}}}}
    current = {
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 10,
            "template": {
                "spec": {
                    "containers": [{"name": "gateway", "image": "a", "terminationMessagePath": "/dev/termination-log"}]
                }
            },
        }
    }
    assert covers(current, desired)
    current["spec"]["replicas"] = 5
    assert not covers(current, desired)
    current["spec"]["replicas"] = 2
    current["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert not covers(current, desired), "an extra list item is drift: lists travel whole"


def test_drift_patch_carries_spec_labels_and_owners_but_no_identity() -> None:
    desired = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "n",
               "labels": {"a": "b"}, "ownerReferences": [{"uid": "u"}]}, "data": {"k": "v"}}  # fmt: skip
    assert drift_patch(desired) == {
        "data": {"k": "v"},
        "metadata": {"labels": {"a": "b"}, "ownerReferences": [{"uid": "u"}]},
    }


def test_ready_when_nothing_waits_and_nothing_is_wrong() -> None:
    by_type = {c["type"]: c for c in conditions.derive(Outcome(generation=3))}
    assert by_type["Ready"]["status"] == "True" and by_type["Ready"]["observedGeneration"] == 3
    assert by_type["Reconciling"]["status"] == "False"
    assert by_type["Degraded"]["status"] == "False"
    assert by_type["Paused"]["status"] == "False"


def test_waiting_components_make_ready_false_and_reconciling_true() -> None:
    by_type = {c["type"]: c for c in conditions.derive(Outcome(generation=1, waiting=["gateway: 0/2 replicas ready"]))}
    assert by_type["Ready"] == {"type": "Ready", "status": "False", "reason": "ComponentsNotReady",
                                "message": "gateway: 0/2 replicas ready", "observedGeneration": 1}  # fmt: skip
    assert by_type["Reconciling"]["status"] == "True"


def test_an_invalid_spec_is_named_in_ready_and_degraded() -> None:
    problem = Problem("InvalidSpec", "spec.gateway.replicas = 500: Input should be less than or equal to 100")
    by_type = {c["type"]: c for c in conditions.derive(Outcome(generation=2, invalid=problem))}
    assert by_type["Ready"]["reason"] == "InvalidSpec" and "spec.gateway.replicas" in by_type["Ready"]["message"]
    assert by_type["Degraded"]["status"] == "True"
    assert by_type["Reconciling"]["status"] == "False"


def test_last_transition_time_moves_only_when_the_status_does() -> None:
    first = conditions.merge([], conditions.derive(Outcome(1, waiting=["x"])), "2026-01-01T00:00:00Z")
    same = conditions.merge(first, conditions.derive(Outcome(1, waiting=["y"])), "2026-01-01T00:01:00Z")
    flipped = conditions.merge(same, conditions.derive(Outcome(1)), "2026-01-01T00:02:00Z")
    ready = [{c["type"]: c for c in conds}["Ready"] for conds in (first, same, flipped)]
    assert [r["lastTransitionTime"] for r in ready] == [
        "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:02:00Z"]  # fmt: skip
    assert ready[1]["message"] == "y"


def test_conditions_fit_the_status_model_of_the_crd() -> None:
    conds = conditions.merge([], conditions.derive(Outcome(1, problems=[Problem("FleetNotFound", "m")])), "t")
    status = DeviceFleetStatus.model_validate({"observedGeneration": 1, "conditions": conds})
    assert len(status.conditions) == 4


def test_paused_annotation() -> None:
    assert conditions.is_paused({"metadata": {"annotations": {"fleetflow.io/paused": "true"}}})
    assert not conditions.is_paused({"metadata": {"annotations": {"fleetflow.io/paused": "false"}}})
    assert not conditions.is_paused({"metadata": {}})


def test_workload_readiness_reads_the_controller_status() -> None:
    assert workload("gateway", None).message == "not created yet"
    rolling = {
        "metadata": {"generation": 3},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2, "readyReplicas": 2},
    }
    assert not workload("gateway", rolling).ready and "rolling out" in workload("gateway", rolling).message
    short = {"spec": {"replicas": 2}, "status": {"readyReplicas": 1}}
    assert workload("gateway", short).message == "1/2 replicas ready" and not workload("gateway", short).ready
    assert workload("gateway", {"spec": {"replicas": 2}, "status": {"readyReplicas": 2}}).ready


def test_rbac_rules_cover_every_kind_the_client_writes_with_exactly_its_verbs() -> None:
    granted = {(group, resource): set(rule["verbs"]) for rule in [*rbac.RULES, *rbac.LEADER_ELECTION_RULES]
               for group in rule["apiGroups"] for resource in rule["resources"]}  # fmt: skip
    for (api_version, _), plural in kube.PLURALS.items():
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        assert (group, plural) in granted, f"no rule for {group}/{plural}"
    assert granted[("apps", "deployments")] == {"get", "list", "watch", "create", "patch", "delete"}
    assert granted[("fleetflow.io", "devicefleets/status")] == {"get", "patch"}
    assert granted[("coordination.k8s.io", "leases")] == {"get", "create", "patch"}, "leader election"
    # The operator only patches. `update` on the finalizers subresource is never called: the API server checks
    # it for children whose ownerReferences set blockOwnerDeletion.
    updated = {key for key, verbs in granted.items() if "update" in verbs}
    assert updated == {("fleetflow.io", "devicefleets/finalizers"), ("fleetflow.io", "pipelines/finalizers")}


def test_kopf_and_the_client_share_the_kubeconfig_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
              "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True}}],
              "users": [{"name": "u", "user": {"token": "s3cr3t"}}],
              "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}  # fmt: skip
    (tmp_path / "config").write_text(yaml.safe_dump(config))
    # The kubernetes package reads $KUBECONFIG once, at import.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "config"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    configuration = kube.load_configuration()
    info = connection_info(configuration)
    assert info.server == "https://10.0.0.1:6443"
    assert (info.scheme, info.token, info.insecure) == ("Bearer", "s3cr3t", True)
    assert kube.KubeApi(configuration)._headers() == {"Authorization": "Bearer s3cr3t"}


def test_object_paths_follow_the_api_groups() -> None:
    assert kube.object_path(kube.Ref("v1", "ConfigMap", "ns", "x")) == "/api/v1/namespaces/ns/configmaps/x"
    ref = kube.Ref("fleetflow.io/v1alpha1", "DeviceFleet", "ns", "cold")
    assert kube.object_path(ref, "status") == "/apis/fleetflow.io/v1alpha1/namespaces/ns/devicefleets/cold/status"
    with pytest.raises(ValueError, match="does not manage v1 Pod"):
        kube.collection_path("v1", "Pod", "ns")
