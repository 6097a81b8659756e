"""What the chart installs: valid Kubernetes objects, an operator the CLI and OperatorOptions understand."""

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from fleetflow.api import DeviceFleet
from fleetflow.cli.main import build_parser
from fleetflow.operator.builders import nats as nats_builder
from fleetflow.operator.builders.common import SERVICE_UID
from fleetflow.operator.main import OPS_PORT
from fleetflow.operator.options import OperatorOptions
from tests.packaging import chart

FULL = chart.load_values(Path(__file__).with_name("full-values.yaml"))
WATCHING_TWO = {"operator": {"watchNamespaces": ["plant-a", "plant-b"]}}
MONITORED = {"podMonitor": {"enabled": True}, "networkPolicy": {"enabled": True}}
NATS_FLEET = DeviceFleet.model_validate({"metadata": {"name": "plant", "namespace": "plant-a"}})
# Kinds of prometheus-operator, not of Kubernetes itself: checked by the tests below instead.
CUSTOM_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


def operator_container(found: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = chart.one(found, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_values(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@pytest.mark.parametrize("values", [None, FULL, WATCHING_TWO, MONITORED], ids=["default", "full", "two-ns", "monitors"])
def test_every_object_is_valid_for_the_oldest_supported_kubernetes(values: dict[str, Any] | None) -> None:
    for obj in chart.objects(values):
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, chart.KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_operator_runs_non_root_on_a_read_only_root_filesystem_with_a_writable_tmp() -> None:
    found = chart.objects()
    pod = chart.one(found, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(found)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == SERVICE_UID, "the image's uid, which the services run as too"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert "emptyDir" in volumes["tmp"]
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "ops"}, probe
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert container["resources"] == chart.load_values(chart.CHART / "values.yaml")["resources"]


def test_two_operators_by_default_that_elect_a_leader_on_a_lease_in_the_release_namespace() -> None:
    found = chart.objects()
    deployment = chart.one(found, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}, "safe: only the Lease holder acts"
    env = {e["name"]: e for e in operator_container(found)["env"]}
    assert env["FLEETFLOW_OPERATOR_LEASE"]["value"] == f"{chart.NAMESPACE}/ff-fleetflow-operator"
    assert env["FLEETFLOW_OPERATOR_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize(
    ("values", "namespaces"),
    [(None, None), (WATCHING_TWO, ["plant-a", "plant-b"])],
    ids=["all-namespaces", "two-namespaces"],
)
def test_operator_arguments_are_understood_by_the_cli(values: dict[str, Any] | None, namespaces: Any) -> None:
    container = operator_container(chart.objects(values))
    assert "command" not in container, "the image's entrypoint is `fleetflow`"
    args = build_parser().parse_args(container["args"])
    assert args.command == "operator"
    assert args.namespaces == namespaces
    assert args.all_namespaces is (namespaces is None)


def test_operator_gives_its_own_image_and_settings_to_the_services_it_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    container = operator_container(chart.objects(FULL))
    env = env_values(container)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    options = OperatorOptions.from_environment()
    image = f"{FULL['image']['repository']}@{FULL['image']['digest']}"
    assert container["image"] == image
    assert options.image == image, "gateways, processors and writers run the operator's own image"
    assert options.image_pull_policy == FULL["image"]["pullPolicy"] == container["imagePullPolicy"]
    assert options.nats_image == FULL["operator"]["natsImage"]
    assert options.nats_exporter_image == FULL["operator"]["natsExporterImage"]
    assert options.resync_seconds == FULL["operator"]["resyncSeconds"]
    pulled_with = tuple(secret["name"] for secret in FULL["imagePullSecrets"])
    assert pulled_with, "full-values.yaml sets imagePullSecrets"
    assert options.image_pull_secrets == pulled_with, "every pod the operator creates pulls as the operator does"
    assert env["FLEETFLOW_LOG_LEVEL"] == "debug"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == FULL["otlp"]["endpoint"]


def test_image_tag_defaults_to_the_charts_app_version() -> None:
    app_version = chart.load_values(chart.CHART / "Chart.yaml")["appVersion"]
    container = operator_container(chart.objects())
    assert container["image"] == f"ghcr.io/fleetflow/fleetflow:{app_version}"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env_values(container), "no endpoint configured, none passed on"


def test_extra_env_volumes_and_scheduling_values_reach_the_pod() -> None:
    found = chart.objects(FULL)
    deployment = chart.one(found, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(found)
    for env in FULL["extraEnv"]:
        assert env in container["env"]
    assert container["envFrom"] == FULL["extraEnvFrom"]
    assert FULL["extraVolumes"][0] in pod["volumes"]
    assert FULL["extraVolumeMounts"][0] in container["volumeMounts"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        assert pod[key] == FULL[key], key
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == FULL["podAnnotations"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["example.com/cost-centre"] == "plant"
    assert pod["serviceAccountName"] == "telemetry-operator" == chart.one(found, "ServiceAccount")["metadata"]["name"]


def test_dashboards_ship_as_configmaps_grafana_picks_up() -> None:
    # The metrics dashboards, and the device-data ones of dashboards/api/, which full-values.yaml enables.
    files = {p.stem: p for folder in ("dashboards", "dashboards/api") for p in (chart.CHART / folder).glob("*.json")}
    maps = {o["metadata"]["name"]: o for o in chart.objects(FULL) if o["kind"] == "ConfigMap"}
    assert set(maps) == {f"plant-telemetry-dashboard-{name}" for name in files}
    for name, path in files.items():
        cm = maps[f"plant-telemetry-dashboard-{name}"]
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "IoT"}
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())
    assert not [o for o in chart.objects({"dashboards": {"enabled": False}}) if o["kind"] == "ConfigMap"]


def test_monitors_scrape_the_ops_port_of_the_operators_pods_in_the_watched_namespaces() -> None:
    for kind, key, endpoints in (("PodMonitor", "podMonitor", "podMetricsEndpoints"),
                                 ("ServiceMonitor", "serviceMonitor", "endpoints")):  # fmt: skip
        rendered = chart.objects({**WATCHING_TWO, key: {"enabled": True, "labels": {"release": "kps"}}})
        name = "ff-fleetflow-pods" if kind == "PodMonitor" else None
        monitor = chart.one(rendered, kind, name)
        assert monitor["metadata"]["labels"]["release"] == "kps"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["plant-a", "plant-b"]}
        assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"] == "fleetflow-operator"
        services, exporter = monitor["spec"][endpoints]
        assert services["port"] == "ops" and services["path"] == "/metrics"
        assert exporter["port"] == nats_builder.nats_headless_service(NATS_FLEET)["spec"]["ports"][-1]["name"]
        for endpoint in (services, exporter):
            targets = {r["targetLabel"] for r in endpoint["relabelings"]}
            assert {"fleet", "pipeline", "component"} <= targets, "the dashboards filter on these"
        assert services["honorLabels"] is True, "the services' own fleet/pipeline/component labels must win"
    with_pod_monitors = chart.objects({"podMonitor": {"enabled": True}})
    assert chart.one(with_pod_monitors, "PodMonitor", "ff-fleetflow-pods")["spec"]["namespaceSelector"] == {"any": True}
    operator_monitor = chart.one(with_pod_monitors, "PodMonitor", "ff-fleetflow-operator")["spec"]
    assert operator_monitor["podMetricsEndpoints"][0]["port"] == "ops"
    deployment = chart.one(with_pod_monitors, "Deployment")
    assert operator_monitor["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert not [o for o in chart.objects() if o["kind"] in CUSTOM_KINDS | {"NetworkPolicy"}], "all off by default"


def test_network_policy_lets_the_operator_reach_only_what_it_needs() -> None:
    policy = chart.one(chart.objects(FULL), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": "ops", "protocol": "TCP"}]}]
    ports = [[p["port"] for p in rule.get("ports", [])] for rule in policy["egress"]]
    assert ports[:4] == [[53, 53], [443], [4222], [4317]]
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}, {"ipBlock": {"cidr": "172.18.0.2/32"}}]
    assert policy["egress"][4:] == FULL["networkPolicy"]["extraEgress"]


def test_notes_tell_the_next_commands_with_the_release_names() -> None:
    notes = chart.render()["fleetflow/templates/NOTES.txt"]
    assert f"kubectl -n {chart.NAMESPACE} rollout status deployment/ff-fleetflow-operator" in notes
    assert "kubectl get devicefleets,pipelines -A" in notes
    assert "port-forward service/<fleet>-gateway 8080:8080" in notes


def test_probes_point_at_the_ops_port_the_operator_serves() -> None:
    import inspect

    from fleetflow.operator.main import run

    container = operator_container(chart.objects())
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"ops": OPS_PORT}, "leader and standby serve /healthz, /readyz and /metrics there"
    assert inspect.signature(run).parameters["liveness_endpoint"].default is None, "kopf's own: not for a standby"
