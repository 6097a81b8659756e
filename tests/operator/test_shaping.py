"""Pod and Service overrides: what an admin sets on a DeviceFleet or Pipeline reaches exactly the component it
names, the chart's pull secrets reach every pod, and bad overrides are refused naming the field."""

from typing import Any

import cel
import kubernetes_validate
import pytest
import yaml

from fleetflow.api import SpecError
from fleetflow.api.crds import all_crds
from fleetflow.operator.builders import gateway, nats, pipeline, shaping
from fleetflow.operator.builders.resources import DEFAULT_RESOURCES
from fleetflow.operator.options import OperatorOptions, parse_pull_secrets
from tests.operator.test_builders import KUBERNETES_VERSIONS
from tests.operator.variants import (
    POD_OVERRIDES,
    SHAPED_FLEET_SPEC,
    SHAPED_PIPELINE_SPEC,
    fleet,
    fleet_doc,
    pipeline_doc,
)
from tests.operator.variants import pipeline as pipeline_of

PULL_SECRETS = ("regcred", "component-registry")
Obj = dict[str, Any]


def workloads(fleet_spec: Obj, pipeline_spec: Obj, pull_secrets: tuple[str, ...] = ()) -> dict[str, Obj]:
    """Component -> its rendered Deployment or StatefulSet."""
    f, p = fleet(fleet_doc(**fleet_spec)), pipeline_of(pipeline_doc(**pipeline_spec))
    return {
        "gateway": gateway.gateway_statefulset(f, "img", "IfNotPresent", {}, pull_secrets=pull_secrets),
        "nats": nats.nats_statefulset(f, "nats:x", "IfNotPresent", {}, pull_secrets),
        "processor": pipeline.processor_statefulset(f, p, "img", "IfNotPresent", {}, pull_secrets=pull_secrets),
        "writer": pipeline.writer_deployment(f, p, "img", "IfNotPresent", {}, pull_secrets=pull_secrets),
    }


def pod_spec(workload: Obj) -> Obj:
    return dict(workload["spec"]["template"]["spec"])


def main_container(workload: Obj, component: str) -> Obj:
    (found,) = [c for c in pod_spec(workload)["containers"] if c["name"] == component]
    return dict(found)


@pytest.mark.parametrize("component", ["gateway", "nats", "processor", "writer"])
def test_every_pod_override_reaches_the_component(component: str) -> None:
    workload = workloads(SHAPED_FLEET_SPEC, SHAPED_PIPELINE_SPEC)[component]
    spec = pod_spec(workload)
    assert main_container(workload, component)["resources"] == POD_OVERRIDES["resources"]
    assert spec["nodeSelector"] == POD_OVERRIDES["nodeSelector"]
    assert spec["tolerations"] == POD_OVERRIDES["tolerations"]
    assert spec["affinity"] == POD_OVERRIDES["affinity"]
    assert spec["priorityClassName"] == "iot-critical"
    assert spec["imagePullSecrets"] == [{"name": "component-registry"}]
    # A spread constraint without a selector selects the component's own pods.
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["labelSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]
    meta = workload["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "iot"
    assert meta["labels"]["app.kubernetes.io/name"] == f"fleetflow-{component}"  # still selected by its workload
    assert meta["annotations"]["example.com/owner"] == "iot-team"
    assert "fleetflow.io/config-hash" in meta["annotations"]


def test_overrides_of_one_component_leave_the_others_as_they_were() -> None:
    plain = workloads({}, {})
    shaped = workloads({"gateway": {"pod": POD_OVERRIDES}}, {})
    assert shaped["gateway"] != plain["gateway"]
    for component in ("nats", "processor", "writer"):
        assert shaped[component] == plain[component], component


@pytest.mark.parametrize("component", ["gateway", "nats", "processor", "writer"])
def test_by_default_every_component_spreads_over_nodes_and_zones(component: str) -> None:
    workload = workloads({}, {})[component]
    spread = pod_spec(workload)["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    # NATS servers never share a node (two would fail together and take the JetStream quorum with them).
    on_nodes = "DoNotSchedule" if component == "nats" else "ScheduleAnyway"
    assert [c["whenUnsatisfiable"] for c in spread] == [on_nodes, "ScheduleAnyway"]
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]
    assert "imagePullSecrets" not in pod_spec(workload)


@pytest.mark.parametrize("component", ["gateway", "nats", "processor", "writer"])
def test_the_operators_pull_secrets_reach_every_workload_with_the_components_own_once(component: str) -> None:
    workload = workloads(SHAPED_FLEET_SPEC, SHAPED_PIPELINE_SPEC, PULL_SECRETS)[component]
    assert pod_spec(workload)["imagePullSecrets"] == [{"name": "regcred"}, {"name": "component-registry"}]


def test_pull_secrets_come_from_the_operators_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETFLOW_OPERATOR_IMAGE_PULL_SECRETS", "regcred, mirror.cred")
    assert OperatorOptions.from_environment().image_pull_secrets == ("regcred", "mirror.cred")
    assert parse_pull_secrets("") == ()
    with pytest.raises(ValueError, match=r"'Reg Cred' is not a Secret name"):
        parse_pull_secrets("regcred,Reg Cred")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_shaped_workloads_and_services_validate(version: str) -> None:
    f = fleet(fleet_doc(**SHAPED_FLEET_SPEC))
    objects = [*workloads(SHAPED_FLEET_SPEC, SHAPED_PIPELINE_SPEC, PULL_SECRETS).values(), gateway.gateway_service(f)]
    objects.append(nats.nats_mqtt_service(f))
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_gateway_service_is_published_as_asked() -> None:
    service = gateway.gateway_service(fleet(fleet_doc(**SHAPED_FLEET_SPEC)))
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert service["metadata"]["annotations"] == {"example.com/lb": "internal"}
    assert gateway.gateway_service(fleet(fleet_doc()))["spec"]["type"] == "ClusterIP"


def test_mqtt_is_published_alone_and_only_when_asked() -> None:
    f = fleet(fleet_doc(**SHAPED_FLEET_SPEC))
    service = nats.nats_mqtt_service(f)
    assert service is not None
    assert service["metadata"]["name"] == "cold-mqtt"
    assert service["spec"]["type"] == "NodePort"
    assert [p["port"] for p in service["spec"]["ports"]] == [nats.MQTT_PORT]  # never the client port
    assert service in nats.nats_objects(f, "nats:x", "IfNotPresent", {})
    plain = fleet(fleet_doc())
    assert nats.nats_mqtt_service(plain) is None
    assert "cold-mqtt" not in [o["metadata"]["name"] for o in nats.nats_objects(plain, "nats:x", "IfNotPresent", {})]


def test_every_component_has_a_disruption_budget_of_one_pod() -> None:
    f, p = fleet(fleet_doc()), pipeline_of(pipeline_doc())
    budgets = [
        o
        for o in [
            *nats.nats_objects(f, "nats:x", "IfNotPresent", {}),
            *gateway.gateway_objects(f, "img", "IfNotPresent", {}),
            *pipeline.pipeline_objects(f, p, "img", "IfNotPresent", DEFAULT_RESOURCES),
        ]
        if o["kind"] == "PodDisruptionBudget"
    ]
    selected = {b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for b in budgets}
    assert selected == {"fleetflow-nats", "fleetflow-gateway", "fleetflow-processor", "fleetflow-writer"}
    assert {b["spec"]["maxUnavailable"] for b in budgets} == {1}


def test_shaping_a_pod_changes_no_service_config_so_no_other_component_restarts() -> None:
    plain_f, plain_p = fleet(fleet_doc(nats={"managed": {}})), pipeline_of(pipeline_doc())
    shaped_f, shaped_p = fleet(fleet_doc(**SHAPED_FLEET_SPEC)), pipeline_of(pipeline_doc(**SHAPED_PIPELINE_SPEC))
    assert gateway.rendered_config(shaped_f) == gateway.rendered_config(plain_f)
    assert pipeline.processor_rendered_config(shaped_f, shaped_p) == pipeline.processor_rendered_config(
        plain_f, plain_p
    )
    assert pipeline.writer_rendered_config(shaped_f, shaped_p) == pipeline.writer_rendered_config(plain_f, plain_p)
    assert "pod" not in yaml.safe_load(gateway.rendered_config(shaped_f))["fleet"]["spec"]["gateway"]


# --- the escape hatch -----------------------------------------------------------------------------------


def test_patches_apply_to_the_rendered_workload_last() -> None:
    patches = [
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "EXTRA", "value": "1"}},
        {"op": "replace", "path": "/spec/template/spec/terminationGracePeriodSeconds", "value": 90},
        {"op": "remove", "path": "/spec/template/spec/enableServiceLinks"},
    ]
    writer = workloads({}, {"writer": {"pod": {"patches": patches}}})["writer"]
    spec = pod_spec(writer)
    assert spec["containers"][0]["env"][-1] == {"name": "EXTRA", "value": "1"}
    assert spec["terminationGracePeriodSeconds"] == 90
    assert "enableServiceLinks" not in spec
    kubernetes_validate.validate(writer, KUBERNETES_VERSIONS[0], strict=True)


def test_a_patch_that_does_not_apply_names_the_field_and_the_path() -> None:
    patches = [{"op": "replace", "path": "/spec/template/spec/noSuchField", "value": 1}]
    with pytest.raises(shaping.PatchError, match=r"spec\.nats\.managed\.pod\.patches: .*noSuchField"):
        workloads({"nats": {"managed": {"pod": {"patches": patches}}}}, {})


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        ({"op": "add", "path": "/spec/x"}, r"patch op 'add' at '/spec/x' needs a value"),
        ({"op": "copy", "path": "/spec/x"}, r"patch op 'copy' at '/spec/x' needs 'from'"),
        ({"op": "merge", "path": "/spec/x", "value": 1}, r"op = 'merge'"),
        ({"op": "add", "path": "spec/x", "value": 1}, r"path = 'spec/x'"),
    ],
)
def test_a_malformed_patch_is_refused_naming_it(operation: Obj, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        fleet(fleet_doc(gateway={"pod": {"patches": [operation]}}))


# --- refused overrides ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gateway_spec", "message"),
    [
        ({"pod": {"labels": {"app.kubernetes.io/name": "x"}}}, r"pod labels app\.kubernetes\.io/name: keys under"),
        ({"pod": {"annotations": {"fleetflow.io/config-hash": "x"}}}, r"pod annotations fleetflow\.io/config-hash"),
        ({"pod": {"resources": {"limits": {"memory": "lots"}}}}, r"quantity 'lots' is not valid"),
        ({"pod": {"tolerations": [{"effect": "Sometimes"}]}}, r"effect = 'Sometimes'"),
        ({"service": {"loadBalancerSourceRanges": ["10.0.0.0/8"]}}, r"needs type LoadBalancer, not 'ClusterIP'"),
        ({"service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.300/8"]}},
         r"CIDR '10\.0\.0\.300/8' is not valid"),
        ({"service": {"externalTrafficPolicy": "Local"}}, r"externalTrafficPolicy needs type NodePort or LoadBalancer"),
    ],
)  # fmt: skip
def test_bad_overrides_are_refused_naming_the_field_and_the_value(gateway_spec: Obj, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        fleet(fleet_doc(gateway=gateway_spec))


def _schema(*path: str) -> Obj:
    node = all_crds()["devicefleets.fleetflow.io.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["properties"][name]
    return dict(node)


def test_the_crd_refuses_the_operators_own_label_keys_at_apply() -> None:
    (rule,) = _schema("spec", "gateway", "pod", "labels")["x-kubernetes-validations"]
    assert cel.evaluate(rule["rule"], {"self": {"team": "iot"}}) is True
    assert cel.evaluate(rule["rule"], {"self": {"fleetflow.io/fleet": "other"}}) is False


@pytest.mark.parametrize(
    ("service", "accepted"),
    [
        ({}, True),
        ({"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8"]}, True),
        ({"loadBalancerSourceRanges": ["10.0.0.0/8"]}, False),
        ({"type": "NodePort", "loadBalancerSourceRanges": ["10.0.0.0/8"]}, False),
        ({"type": "NodePort", "externalTrafficPolicy": "Local"}, True),
        ({"type": "ClusterIP", "externalTrafficPolicy": "Local"}, False),
    ],
)
def test_the_crd_refuses_service_settings_that_do_not_fit_the_type(service: Obj, accepted: bool) -> None:
    rules = [r["rule"] for r in _schema("spec", "gateway", "service")["x-kubernetes-validations"]]
    assert all(cel.evaluate(rule, {"self": service}) for rule in rules) is accepted
