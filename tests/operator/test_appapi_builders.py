"""The application API's objects: valid Kubernetes for every variant, a config the service loads, the stores it
can reach, its keys and its URL."""

from typing import Any

import kubernetes_validate
import pytest
import yaml

from fleetflow.appapi import keys
from fleetflow.operator.builders import appapi, common, shaping
from fleetflow.runtime.settings import AppApiSettings
from tests.operator.variants import POD_OVERRIDES, fleet, fleet_doc, pipeline_doc, variants
from tests.operator.variants import pipeline as pipeline_of

KUBERNETES_VERSION = "1.30.0"
IMAGE = "registry.example/fleetflow:test"
OWNER = {"apiVersion": "fleetflow.io/v1alpha1", "kind": "DeviceFleet",
         "metadata": {"name": "cold", "uid": "0f1e2d3c-0000-4000-8000-000000000001"}}  # fmt: skip


def settings_of(config_map: dict[str, Any], monkeypatch: pytest.MonkeyPatch, deployment: dict[str, Any]) -> Any:
    """The settings the API's pod loads: its ConfigMap plus its container's environment."""
    for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
    return AppApiSettings(**yaml.safe_load(config_map["data"][common.CONFIG_KEY]))


@pytest.mark.parametrize("variant", list(variants()))
def test_every_api_object_validates_against_the_kubernetes_openapi_schema(variant: str) -> None:
    f, p = variants()[variant]
    objects = [*appapi.appapi_objects(f, [p], IMAGE, "IfNotPresent", appapi.DEFAULT_RESOURCES, (), ("regcred",)),
               appapi.keys_secret(f)]  # fmt: skip
    assert [o["kind"] for o in objects] == ["ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "Secret"]
    for obj in objects:
        try:
            kubernetes_validate.validate(common.owned(obj, OWNER), KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{variant}: {obj['kind']} {obj['metadata']['name']} is invalid: {exc}")


def test_the_api_serves_the_fleets_cassandra_pipelines_with_their_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    f, cassandra = variants()["full"]
    local = pipeline_of(pipeline_doc(name="on-disk"))  # a SQLite file in its writer's pod: out of reach
    elsewhere = pipeline_of(pipeline_doc(name="other", fleet="warm", sink=cassandra.spec.sink.to_k8s()))
    config_map = appapi.appapi_config_map(f, [local, cassandra, elsewhere])
    deployment = appapi.appapi_deployment(f, [local, cassandra, elsewhere], IMAGE, "Always", {})

    settings = settings_of(config_map, monkeypatch, deployment)
    assert [p.name for p in settings.pipelines] == [cassandra.name]
    assert str(settings.cassandra_credentials_dir) == "/var/run/fleetflow/cassandra"
    assert str(settings.keys_file) == "/var/run/fleetflow/api-keys/keys.json"
    assert (settings.listen_host, settings.listen_port, settings.ops_host) == ("0.0.0.0", 8090, "0.0.0.0")
    assert settings.nats_url == f"nats://{f.name}-nats.ns1.svc:4222"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cassandra-credentials"]["secret"]["secretName"] == "cassandra-credentials"
    assert volumes["api-keys"]["secret"]["secretName"] == f"{f.name}-api-keys"
    mounts = {m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert {"/etc/fleetflow", "/tmp", appapi.KEYS_DIR, "/var/run/fleetflow/cassandra"} <= mounts


def test_the_keys_secret_starts_as_an_empty_key_file_the_api_reads(tmp_path: Any) -> None:
    f = fleet(fleet_doc())
    secret = appapi.keys_secret(f)
    path = tmp_path / "keys.json"
    path.write_text(secret["stringData"][appapi.KEYS_KEY])
    assert keys.read_keys(path) == []
    assert secret["metadata"]["name"] == "cold-api-keys"


def test_the_url_is_the_services_and_a_changed_pipeline_rolls_the_pods() -> None:
    f, p = variants()["full"]
    service = appapi.appapi_service(f)
    assert appapi.url(f) == f"http://{service['metadata']['name']}.ns1.svc:{service['spec']['ports'][0]['port']}"
    before = appapi.appapi_deployment(f, [p], IMAGE, "Always", {})
    changed = pipeline_of(pipeline_doc(name=p.name, sink={**p.spec.sink.to_k8s(), "ttl": "7d"}))
    after = appapi.appapi_deployment(f, [changed], IMAGE, "Always", {})
    annotation = common.CONFIG_HASH_ANNOTATION
    assert before["spec"]["template"]["metadata"]["annotations"][annotation] != \
        after["spec"]["template"]["metadata"]["annotations"][annotation]  # fmt: skip


def test_the_api_pods_are_shaped_spread_and_budgeted_like_the_other_components() -> None:
    f, p = variants()["shaped"]
    deployment = appapi.appapi_deployment(f, [p], IMAGE, "Always", appapi.DEFAULT_RESOURCES, (), ("regcred",))
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["priorityClassName"] == "iot-critical" and pod["nodeSelector"]
    assert [s["name"] for s in pod["imagePullSecrets"]] == ["regcred", "component-registry"]
    assert pod["containers"][0]["resources"] == POD_OVERRIDES["resources"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "iot"
    plain = appapi.appapi_deployment(fleet(fleet_doc()), [p], IMAGE, "Always", {})
    spread = plain["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert plain["spec"]["replicas"] == 1
    budget = appapi.appapi_pdb(f)
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": common.selector_labels("cold", "appapi")},
    }


def test_a_patch_of_the_api_pods_that_does_not_apply_names_its_field() -> None:
    bad = [{"op": "replace", "path": "/spec/template/spec/nothingHere", "value": 1}]
    f = fleet(fleet_doc(api={"pod": {"patches": bad}}))
    with pytest.raises(shaping.PatchError, match=r"spec\.api\.pod\.patches"):
        appapi.appapi_deployment(f, [], IMAGE, "Always", {})
