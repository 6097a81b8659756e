"""The builders: what each rendered object says, and that every object of every variant is valid Kubernetes."""

import base64
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.operator import nats_credentials
from fleetflow.operator.builders import common, gateway, nats, pipeline
from fleetflow.operator.builders.resources import DEFAULT_RESOURCES
from fleetflow.operator.options import OperatorOptions
from fleetflow.runtime.settings import GatewaySettings, ProcessorSettings, WriterSettings
from tests.operator.variants import FULL_FLEET_SPEC, fleet, fleet_doc, pipeline_doc, variants
from tests.operator.variants import pipeline as pipeline_of

KUBERNETES_VERSION = "1.30.0"
# The oldest Kubernetes fleetflow supports and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = (KUBERNETES_VERSION, kubernetes_validate.latest_version())
IMAGE = "registry.example/fleetflow:test"
OWNER = {"apiVersion": "fleetflow.io/v1alpha1", "kind": "DeviceFleet",
         "metadata": {"name": "cold", "uid": "0f1e2d3c-0000-4000-8000-000000000001"}}  # fmt: skip


def rendered(f: DeviceFleet, p: Pipeline) -> list[dict[str, Any]]:
    objects = [
        *nats.nats_objects(f, "nats:2.10-alpine", "IfNotPresent", DEFAULT_RESOURCES["nats"]),
        *gateway.gateway_objects(f, IMAGE, "IfNotPresent", DEFAULT_RESOURCES["gateway"]),
        gateway.device_secret(f, b"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"),
        *pipeline.pipeline_objects(f, p, IMAGE, "IfNotPresent", DEFAULT_RESOURCES),
    ]
    if nats.managed(f):
        objects.append(nats_credentials.credentials_secret(f, nats_credentials.new_values()))
    return [common.owned(obj, OWNER) for obj in objects]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", list(variants()))
def test_every_rendered_object_validates_against_the_kubernetes_openapi_schema(variant: str, version: str) -> None:
    f, p = variants()[variant]
    objects = rendered(f, p)
    assert len(objects) >= 9
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{variant}: {obj['kind']} {obj['metadata']['name']} is invalid for {version}: {exc}")


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    """The workload's main container; only NATS has another, its metrics exporter."""
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers[1:]] in ([], ["metrics"])
    return dict(containers[0])


# --- NATS -----------------------------------------------------------------------------------------------


def test_single_nats_server_has_jetstream_mqtt_and_no_cluster_block() -> None:
    f = fleet(fleet_doc())
    conf = nats.server_config(f)
    assert "jetstream {" in conf and 'store_dir: "/data/jetstream"' in conf
    assert "mqtt {\n  listen: 0.0.0.0:1883\n  no_auth_user: mqtt-anonymous\n}" in conf
    assert "cluster" not in conf
    assert "server_name: $POD_NAME" in conf
    assert "max_payload: 3149824" in conf  # 3 x the default 1 MiB maxBodyBytes + 4 KiB: any valid body fits


def test_managed_nats_carries_the_largest_message_a_valid_body_becomes() -> None:
    f = fleet(fleet_doc(gateway={"maxBodyBytes": 4 * 1048576}))
    assert f"max_payload: {3 * 4 * 1048576 + 4096}" in nats.server_config(f)


def test_three_nats_servers_route_to_each_other_through_the_headless_service() -> None:
    f = fleet(fleet_doc(nats={"managed": {"replicas": 3}}))
    conf = nats.server_config(f)
    assert "  routes: $NATS_ROUTES\n" in conf
    statefulset = nats.nats_statefulset(f, "nats:x", "Always", DEFAULT_RESOURCES["nats"])
    routes = {e["name"]: e for e in container(statefulset)["env"]}["NATS_ROUTES"]["value"]
    for i in range(3):
        assert f"nats://route:$(NATS_ROUTES_PASSWORD)@cold-nats-{i}.cold-nats-headless.ns1.svc:6222" in routes
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["serviceName"] == "cold-nats-headless"


def test_nats_statefulset_probes_prestop_storage_and_security() -> None:
    f = fleet(fleet_doc(nats={"managed": {"storageSize": "20Gi", "storageClassName": "fast"}}))
    statefulset = nats.nats_statefulset(f, "nats:x", "IfNotPresent", DEFAULT_RESOURCES["nats"])
    c = container(statefulset)
    assert c["image"] == "nats:x"
    assert c["readinessProbe"]["exec"]["command"][-1] == "http://127.0.0.1:8222/healthz?js-enabled-only=true"
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", "-sl=ldm=/var/run/nats/nats.pid"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    claim = statefulset["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "20Gi"
    assert claim["storageClassName"] == "fast"
    assert "max_file_store: 19327352832" in nats.server_config(f)  # 90% of 20Gi
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "cold-nats-config"


def test_nats_services_and_config_map() -> None:
    f = fleet(fleet_doc())
    headless = nats.nats_headless_service(f)
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    client = nats.nats_client_service(f)
    assert {p["name"]: p["port"] for p in client["spec"]["ports"]} == {"client": 4222, "mqtt": 1883}
    assert nats.nats_config_map(f)["data"]["nats.conf"] == nats.server_config(f)
    assert nats.nats_url(f) == "nats://cold-nats.ns1.svc:4222"


def test_external_nats_means_no_nats_objects_and_its_url_everywhere() -> None:
    f = fleet(fleet_doc(nats={"external": {"url": "nats://shared:4222"}}))
    assert nats.nats_objects(f, "nats:x", "IfNotPresent", {}) == []
    assert nats.nats_url(f) == "nats://shared:4222"
    assert "mqtt" not in gateway.endpoints(f)
    assert yaml.safe_load(gateway.rendered_config(f))["nats_url"] == "nats://shared:4222"


def test_a_gateway_with_tls_lists_its_websocket_endpoint_as_wss() -> None:
    f = fleet(fleet_doc(gateway={"tls": {"secretName": "g"}}))
    assert gateway.endpoints(f)["ws"] == "wss://cold-gateway.ns1.svc:8080"
    assert gateway.endpoints(f)["coap"] == "coap://cold-gateway.ns1.svc:5683"  # no DTLS: see docs/devices.md


# --- gateway --------------------------------------------------------------------------------------------


def test_gateway_config_map_is_the_runtime_config_the_gateway_loads() -> None:
    f = fleet(fleet_doc(gateway={"maxBatchReadings": 77}))
    data = yaml.safe_load(gateway.gateway_config_map(f)["data"][common.CONFIG_KEY])
    settings = GatewaySettings(**data)
    assert settings.fleet.spec.gateway.max_batch_readings == 77
    assert str(settings.secret_file) == "/var/run/fleetflow/device-secret/secret"
    assert settings.listen_port == gateway.HTTP_PORT
    assert settings.coap_port == gateway.COAP_PORT == 5683
    assert settings.nats_url == "nats://cold-nats.ns1.svc:4222"


def test_gateway_runs_the_one_image_with_probes_and_a_locked_down_pod() -> None:
    f = fleet(fleet_doc(gateway={"replicas": 2}))
    deployment = gateway.gateway_statefulset(f, IMAGE, "IfNotPresent", DEFAULT_RESOURCES["gateway"])
    assert deployment["kind"] == "StatefulSet" and deployment["spec"]["replicas"] == 2
    c = container(deployment)
    assert c["command"] == ["fleetflow"]
    assert c["args"] == ["gateway", "--config", "/etc/fleetflow/config.yaml"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert c["resources"] == DEFAULT_RESOURCES["gateway"]
    assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == common.SERVICE_UID
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FLEETFLOW_LISTEN_HOST"] == "0.0.0.0" and env["FLEETFLOW_OPS_HOST"] == "0.0.0.0"
    secret = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}["device-secret"]
    assert secret["secret"]["secretName"] == "cold-device-secret"
    assert env["FLEETFLOW_GRPC_PORT"] == "9090" and env["FLEETFLOW_BUFFER_DIR"] == gateway.BUFFER_DIR
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in c["ports"]}
    assert {"http": (8080, "TCP"), "grpc": (9090, "TCP"), "coap": (5683, "UDP")}.items() <= ports.items()
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/etc/fleetflow", "/tmp", gateway.SECRET_DIR, gateway.BUFFER_DIR} <= mounts, "writable paths are volumes"


def test_the_gateway_container_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    f = fleet(fleet_doc())
    c = container(gateway.gateway_statefulset(f, IMAGE, "Always", {}))
    for item in c["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
    settings = GatewaySettings(**yaml.safe_load(gateway.rendered_config(f)))
    assert (settings.listen_host, settings.grpc_port, settings.ops_port) == ("0.0.0.0", 9090, 8081)
    assert str(settings.buffer_dir) == gateway.BUFFER_DIR


def test_the_operators_log_level_and_otlp_endpoint_reach_every_service() -> None:
    options = OperatorOptions(image=IMAGE, log_level="debug", otlp_endpoint="http://otel:4317")
    f, p = variants()["minimal"]
    workloads = [
        *gateway.gateway_objects(f, IMAGE, "Always", {}, options.service_env()),
        *pipeline.pipeline_objects(f, p, IMAGE, "Always", DEFAULT_RESOURCES, options.service_env()),
    ]
    containers = [container(o) for o in workloads if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(containers) == 3
    for c in containers:
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["FLEETFLOW_LOG_LEVEL"] == "debug"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4317"
        assert env["OTEL_SERVICE_NAME"] == f"fleetflow-{c['name']}"


def test_operator_options_come_from_the_charts_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETFLOW_OPERATOR_IMAGE", "registry.example/ff:1")
    monkeypatch.setenv("FLEETFLOW_OPERATOR_RESYNC_SECONDS", "12")
    monkeypatch.setenv("FLEETFLOW_LOG_LEVEL", "warning")
    options = OperatorOptions.from_environment()
    assert (options.image, options.resync_seconds, options.log_level) == ("registry.example/ff:1", 12.0, "warning")
    monkeypatch.setenv("FLEETFLOW_OPERATOR_RESYNC_SECONDS", "soon")
    with pytest.raises(ValueError, match="FLEETFLOW_OPERATOR_RESYNC_SECONDS = 'soon'"):
        OperatorOptions.from_environment()


def test_a_changed_spec_changes_the_config_hash_so_pods_roll() -> None:
    one = gateway.gateway_statefulset(fleet(fleet_doc()), IMAGE, "Always", {})
    two = gateway.gateway_statefulset(fleet(fleet_doc(gateway={"maxBodyBytes": 4096})), IMAGE, "Always", {})
    key = common.CONFIG_HASH_ANNOTATION
    assert (
        one["spec"]["template"]["metadata"]["annotations"][key]
        != two["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_scaling_the_gateway_does_not_restart_its_pods() -> None:
    key = common.CONFIG_HASH_ANNOTATION
    hashes = {
        gateway.gateway_statefulset(fleet(fleet_doc(gateway=spec)), IMAGE, "Always", {})["spec"]["template"][
            "metadata"
        ]["annotations"][key]
        for spec in ({"replicas": 1}, {"replicas": 5}, {"autoscaling": {"maxReplicas": 9}})
    }
    assert len(hashes) == 1


def test_each_gateway_replica_buffers_on_a_volume_of_its_own() -> None:
    workload = gateway.gateway_statefulset(fleet(fleet_doc()), IMAGE, "Always", {})
    (claim,) = workload["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "buffer"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    pod = workload["spec"]["template"]["spec"]
    assert "buffer" not in {v["name"] for v in pod["volumes"]}, "an emptyDir would go with the pod"
    assert {"name": "buffer", "mountPath": gateway.BUFFER_DIR} in container(workload)["volumeMounts"]
    assert workload["spec"]["serviceName"] == gateway.pods_service_name(fleet(fleet_doc()))  # headless, governing
    assert workload["spec"]["podManagementPolicy"] == "Parallel"


def test_autoscaling_adds_an_hpa_and_leaves_replicas_to_it() -> None:
    f = fleet(fleet_doc(**FULL_FLEET_SPEC))
    hpa = gateway.gateway_hpa(f)
    assert hpa is not None
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 8
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "cold-gateway"}
    assert "replicas" not in gateway.gateway_statefulset(f, IMAGE, "Always", {})["spec"]
    assert gateway.gateway_hpa(fleet(fleet_doc())) is None
    assert [o["kind"] for o in gateway.gateway_objects(f, IMAGE, "Always", {})][-1] == "HorizontalPodAutoscaler"


def test_device_secret_is_generated_only_without_a_secret_ref() -> None:
    plain = fleet(fleet_doc())
    assert gateway.operator_generates_secret(plain)
    secret = gateway.device_secret(plain, b"abc")
    assert secret["metadata"]["name"] == "cold-device-secret"
    assert base64.b64decode(secret["data"]["secret"]) == b"abc"
    named = fleet(fleet_doc(**FULL_FLEET_SPEC))
    assert not gateway.operator_generates_secret(named)
    assert gateway.device_secret_ref(named).name == "cold-tokens"
    deployment = gateway.gateway_statefulset(named, IMAGE, "Always", {})
    volume = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}["device-secret"]
    assert volume["secret"] == {"secretName": "cold-tokens"}, "all keys: fleet-secret.previous during a rotation"
    config = yaml.safe_load(gateway.rendered_config(named))
    assert config["secret_file"] == "/var/run/fleetflow/device-secret/fleet-secret"


def test_gateway_service_pdb_and_endpoints() -> None:
    f = fleet(fleet_doc())
    service = gateway.gateway_service(f)
    assert {p["name"]: (p["port"], p["protocol"]) for p in service["spec"]["ports"]} == {
        "http": (8080, "TCP"),
        "grpc": (9090, "TCP"),
        "coap": (5683, "UDP"),
    }
    pods = gateway.gateway_pods_service(f)
    assert pods["spec"]["clusterIP"] == "None" and [p["name"] for p in pods["spec"]["ports"]] == ["ops"]
    assert gateway.gateway_pdb(f)["spec"]["maxUnavailable"] == 1
    assert gateway.endpoints(f) == {
        "http": "http://cold-gateway.ns1.svc:8080",
        "grpc": "cold-gateway.ns1.svc:9090",
        "ws": "ws://cold-gateway.ns1.svc:8080",
        "coap": "coap://cold-gateway.ns1.svc:5683",
        "nats": "nats://cold-nats.ns1.svc:4222",
        "mqtt": "mqtt://cold-nats.ns1.svc:1883",
    }


def test_every_service_component_is_behind_a_service_with_the_ops_port_the_service_monitor_scrapes() -> None:
    """The chart's ServiceMonitor selects Services by the operator's labels and scrapes their `ops` port; the
    dashboards need the gateway's and the writer's series as much as the processor's."""
    objects = rendered(fleet(fleet_doc()), pipeline_of(pipeline_doc()))
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    services = [o for o in objects if o["kind"] == "Service" and any(p["name"] == "ops" for p in o["spec"]["ports"])]
    scraped = {
        w["metadata"]["labels"]["app.kubernetes.io/name"]
        for w in workloads
        for s in services
        if s["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
    }
    assert scraped == {"fleetflow-gateway", "fleetflow-processor", "fleetflow-writer"}
    for service in services:
        assert service["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "fleetflow-operator"
        (ops,) = [p for p in service["spec"]["ports"] if p["name"] == "ops"]
        assert ops["targetPort"] == "ops" and ops["port"] == 8081


# --- processor and writer --------------------------------------------------------------------------------


def test_processor_is_a_statefulset_whose_pod_index_is_the_replica() -> None:
    f = fleet(fleet_doc(streams={"partitions": 2}))
    p = pipeline_of(pipeline_doc(processor={"replicas": 2}))
    statefulset = pipeline.processor_statefulset(f, p, IMAGE, "Always", DEFAULT_RESOURCES["processor"])
    assert statefulset["spec"]["replicas"] == 2
    assert statefulset["spec"]["serviceName"] == pipeline.processor_service(p)["metadata"]["name"]
    env = {e["name"]: e for e in container(statefulset)["env"]}
    assert env["FLEETFLOW_REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert container(statefulset)["args"][0] == "processor"
    data = yaml.safe_load(pipeline.processor_config_map(f, p)["data"][common.CONFIG_KEY])
    settings = ProcessorSettings(**data)
    assert settings.pipeline.spec.processor.replicas == 2 and settings.fleet.spec.streams.partitions == 2


def test_writer_with_sqlite_gets_a_volume_for_its_database() -> None:
    f, p = fleet(fleet_doc()), pipeline_of(pipeline_doc(writer={"replicas": 1}))
    deployment = pipeline.writer_deployment(f, p, IMAGE, "Always", DEFAULT_RESOURCES["writer"])
    mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
    assert mounts["store"] == "/var/lib/fleetflow"
    settings = WriterSettings(**yaml.safe_load(pipeline.writer_config_map(f, p)["data"][common.CONFIG_KEY]))
    assert str(settings.sqlite_path) == "/var/lib/fleetflow/store.sqlite3"


def test_writer_with_cassandra_mounts_the_credentials_secret() -> None:
    f, p = variants()["full"]
    deployment = pipeline.writer_deployment(f, p, IMAGE, "Always", DEFAULT_RESOURCES["writer"])
    assert deployment["spec"]["replicas"] == 2
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cassandra-credentials"]["secret"]["secretName"] == "cassandra-credentials"
    settings = WriterSettings(**yaml.safe_load(pipeline.writer_config_map(f, p)["data"][common.CONFIG_KEY]))
    assert settings.sqlite_path is None
    assert str(settings.cassandra_credentials_dir) == pipeline.CASSANDRA_CREDENTIALS_DIR
    assert settings.pipeline.spec.sink.cassandra is not None
    assert settings.pipeline.spec.sink.cassandra.local_dc == "dc1"


def test_every_child_is_labelled_and_owned() -> None:
    f, p = variants()["minimal"]
    for obj in rendered(f, p):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "fleetflow-operator"
        assert labels["fleetflow.io/fleet"] == "cold"
        assert obj["metadata"]["namespace"] == "ns1"
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == OWNER["metadata"]["uid"] and ref["controller"] is True


def test_the_schema_check_really_rejects_a_wrong_object() -> None:
    deployment = gateway.gateway_statefulset(variants()["minimal"][0], IMAGE, "Always", {})
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
