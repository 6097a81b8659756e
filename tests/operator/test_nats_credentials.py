"""A managed NATS's credentials: the Secret the operator keeps per fleet, how nats.conf and the pods reach its
keys without a secret ever landing in a ConfigMap or a pod spec, and the reconcile that creates it once,
reports a broken one and rolls the pods when it is re-created. tests/integration/connectivity/
test_cluster_nats_auth.py runs the rendered config with the real nats-server."""

import asyncio
import base64
import json
import re
from typing import Any

import pytest
import yaml

from fleetflow.operator import nats_credentials
from fleetflow.operator.builders import common, gateway, nats, pipeline
from fleetflow.operator.builders.resources import DEFAULT_RESOURCES
from fleetflow.runtime import natsauth
from fleetflow.runtime.settings import GatewaySettings, ProcessorSettings, WriterSettings
from tests.operator.apiserver import ApiServerEmulator
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import cr, create, has_condition
from tests.operator.variants import fleet, fleet_doc, pipeline_doc, variants
from tests.operator.variants import pipeline as pipeline_of

IMAGE = "registry.example/fleetflow:test"
Api = tuple[ApiServerEmulator, str]


def workloads(f: Any, p: Any) -> list[dict[str, Any]]:
    return [
        *nats.nats_objects(f, "nats:2.10-alpine", "IfNotPresent", DEFAULT_RESOURCES["nats"]),
        *gateway.gateway_objects(f, IMAGE, "IfNotPresent", DEFAULT_RESOURCES["gateway"]),
        *pipeline.pipeline_objects(f, p, IMAGE, "IfNotPresent", DEFAULT_RESOURCES),
    ]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"]["spec"])


def env_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The main container's environment; NATS's metrics exporter gets none (and so no secret)."""
    container, *sidecars = pod_spec(obj)["containers"]
    assert all("env" not in sidecar for sidecar in sidecars)
    return list(container["env"])


def credentials_volume(obj: dict[str, Any]) -> dict[str, Any] | None:
    return {v["name"]: v for v in pod_spec(obj)["volumes"]}.get(nats_credentials.VOLUME)


@pytest.mark.parametrize("variant", list(variants()))
def test_no_secret_value_is_in_a_config_map_or_a_pod_spec(variant: str) -> None:
    f, p = variants()[variant]
    values = nats_credentials.new_values()
    stamped = [nats_credentials.stamped(obj, nats_credentials.NatsCredentials(values)) for obj in workloads(f, p)]
    rendered = json.dumps(stamped)
    for key, value in values.items():
        assert value not in rendered, f"{variant}: the Secret's {key} is in a rendered object"


@pytest.mark.parametrize("replicas", [1, 3])
def test_every_variable_of_nats_conf_comes_from_the_secret_or_the_downward_api(replicas: int) -> None:
    f = fleet(fleet_doc(nats={"managed": {"replicas": replicas}}))
    conf = nats.server_config(f)
    env = env_of(nats.nats_statefulset(f, "nats:x", "Always", {}))
    names = [e["name"] for e in env]
    for variable in set(re.findall(r"\$([A-Z_]+)", conf)):
        assert variable in names, f"nats.conf reads ${variable}, which the container does not get"
    by_name = {e["name"]: e for e in env}
    for variable, key in nats.SECRET_ENV.items():
        assert by_name[variable]["valueFrom"]["secretKeyRef"] == {"name": "cold-nats-credentials", "key": key}
    assert "no_auth_user: fleetflow" not in conf, "on a cluster anything reaching the port would be the services"
    if replicas == 3:
        # The kubelet expands $(VAR) only from variables defined before it.
        assert names.index(nats.ROUTES_PASSWORD_ENV) < names.index(nats.ROUTES_ENV)
        assert by_name[nats.ROUTES_PASSWORD_ENV]["valueFrom"]["secretKeyRef"]["key"] == "routes-password"


def test_pods_get_only_the_keys_they_need_and_their_settings_name_them() -> None:
    f, p = fleet(fleet_doc()), pipeline_of(pipeline_doc())
    deployment = gateway.gateway_statefulset(f, IMAGE, "Always", {})
    volume = credentials_volume(deployment)
    assert volume is not None
    assert volume["secret"]["secretName"] == "cold-nats-credentials"
    assert [i["key"] for i in volume["secret"]["items"]] == ["services-password", "mqtt-issuer.nk"]
    assert volume["secret"]["defaultMode"] == 0o440
    (container,) = pod_spec(deployment)["containers"]
    assert nats_credentials.mount() in container["volumeMounts"]
    settings = GatewaySettings(**yaml.safe_load(gateway.rendered_config(f)))
    assert (settings.nats_user, str(settings.nats_password_file)) == (
        "fleetflow",
        f"{nats_credentials.DIR}/services-password",
    )
    assert str(settings.mqtt_issuer_seed_file) == f"{nats_credentials.DIR}/mqtt-issuer.nk"

    for workload in (pipeline.processor_statefulset(f, p, IMAGE, "Always", {}),
                     pipeline.writer_deployment(f, p, IMAGE, "Always", {})):  # fmt: skip
        volume = credentials_volume(workload)
        assert volume is not None and [i["key"] for i in volume["secret"]["items"]] == ["services-password"]
    for settings_type, rendered in ((ProcessorSettings, pipeline.processor_rendered_config(f, p)),
                                    (WriterSettings, pipeline.writer_rendered_config(f, p))):  # fmt: skip
        loaded = settings_type(**yaml.safe_load(rendered))
        assert (loaded.nats_user, loaded.nats_password_file) == ("fleetflow", settings.nats_password_file)


def test_an_external_nats_gets_no_credentials_and_no_mqtt() -> None:
    f, p = variants()["external-nats"]
    for workload in workloads(f, p):
        if workload["kind"] in nats_credentials.WORKLOADS:
            assert credentials_volume(workload) is None
    settings = GatewaySettings(**yaml.safe_load(gateway.rendered_config(f)))
    assert (settings.nats_user, settings.nats_password_file, settings.mqtt_issuer_seed_file) == (None, None, None)


def test_the_secret_holds_an_account_nkey_and_passwords_nats_conf_reads_as_strings() -> None:
    f = fleet(fleet_doc())
    secret = nats_credentials.credentials_secret(f, nats_credentials.new_values())
    assert secret["metadata"]["name"] == "cold-nats-credentials" and secret["type"] == "Opaque"
    read = nats_credentials.read(secret)
    assert set(read.values) == set(nats_credentials.KEYS)
    assert read.values["mqtt-issuer.nk"].startswith("SA") and read.values["mqtt-issuer.pub"].startswith("A")
    assert read.login == natsauth.NatsLogin("fleetflow", read.values["services-password"])
    for key in nats_credentials.PASSWORD_KEYS:
        assert nats_credentials.PASSWORD.match(read.values[key]) and len(read.values[key]) == 40


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"routes-password": None}, "lacks the keys ['routes-password']"),
        ({"services-password": encoded("12345678901234567890")}, "key 'services-password': a password must"),
        ({"anonymous-password": encoded("short")}, "key 'anonymous-password'"),
        ({"mqtt-issuer.nk": encoded(natsauth.new_password())}, "key 'mqtt-issuer.nk': not an account nkey seed"),
        ({"mqtt-issuer.pub": encoded("ABCDEF")}, "key 'mqtt-issuer.pub': not the public key of 'mqtt-issuer.nk'"),
    ],
)
def test_a_broken_secret_is_refused_naming_the_key_but_not_the_value(change: dict[str, Any], named: str) -> None:
    secret = nats_credentials.credentials_secret(fleet(fleet_doc()), nats_credentials.new_values())
    data = {key: value for key, value in {**secret["data"], **change}.items() if value is not None}
    with pytest.raises(nats_credentials.CredentialsError, match=re.escape(named)) as caught:
        nats_credentials.read({**secret, "data": data})
    for key, value in data.items():
        if key != nats_credentials.ISSUER_KEY:
            assert base64.b64decode(value).decode() not in str(caught.value), f"the message shows {key}"


def test_workloads_carry_a_hash_of_the_credentials_so_they_roll_when_it_changes() -> None:
    f = fleet(fleet_doc())
    deployment, config_map = gateway.gateway_statefulset(f, IMAGE, "Always", {}), gateway.gateway_config_map(f)
    one = nats_credentials.NatsCredentials(nats_credentials.new_values())
    two = nats_credentials.NatsCredentials(nats_credentials.new_values())
    annotations = [nats_credentials.stamped(deployment, c)["spec"]["template"]["metadata"]["annotations"]
                   for c in (one, two)]  # fmt: skip
    assert annotations[0][nats_credentials.HASH_ANNOTATION] != annotations[1][nats_credentials.HASH_ANNOTATION]
    assert (
        annotations[0][common.CONFIG_HASH_ANNOTATION]
        == deployment["spec"]["template"]["metadata"]["annotations"][common.CONFIG_HASH_ANNOTATION]
    )
    assert nats_credentials.stamped(config_map, one) == config_map
    assert nats_credentials.stamped(deployment, None) == deployment


# --- the reconcile --------------------------------------------------------------------------------------


def pod_annotation(emulator: ApiServerEmulator, api_version: str, plural: str, name: str) -> str | None:
    obj = emulator.get(api_version, plural, "ns1", name) or {}
    annotations = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
    return annotations.get(nats_credentials.HASH_ANNOTATION)


async def test_the_secret_is_created_once_owned_and_its_hash_is_on_every_pod(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator():
        await create(emulator, fleet_doc())
        await create(emulator, pipeline_doc())
        secret = await wait_until(lambda: emulator.get("v1", "secrets", "ns1", "cold-nats-credentials"),
                                  what="the NATS credentials Secret")  # fmt: skip
        fleet_uid = cr(emulator, "devicefleets", "cold")["metadata"]["uid"]
        assert secret["metadata"]["ownerReferences"][0]["uid"] == fleet_uid
        digest = nats_credentials.read(secret).digest
        children = [("apps/v1", "statefulsets", "cold-nats"), ("apps/v1", "statefulsets", "cold-gateway"),
                    ("apps/v1", "statefulsets", "store-processor"), ("apps/v1", "deployments", "store-writer")]  # fmt: skip
        await wait_until(lambda: all(pod_annotation(emulator, *child) == digest for child in children),
                         what="the pods of NATS, gateway, processor and writer to carry the credentials' hash")  # fmt: skip

        await asyncio.sleep(1.2)  # more than two resync periods
        again = emulator.get("v1", "secrets", "ns1", "cold-nats-credentials")
        assert again is not None and again["data"] == secret["data"], "never regenerated while it exists"
        assert again["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"], "nor patched"

        await emulator.remove("v1", "secrets", "ns1", "cold-nats-credentials")
        renewed = await wait_until(lambda: emulator.get("v1", "secrets", "ns1", "cold-nats-credentials"),
                                   what="a new Secret")  # fmt: skip
        assert renewed["data"] != secret["data"]
        new_digest = nats_credentials.read(renewed).digest
        await wait_until(lambda: pod_annotation(emulator, "apps/v1", "statefulsets", "cold-nats") == new_digest,
                         what="the NATS pods to roll with the new credentials")  # fmt: skip
        await wait_until(lambda: pod_annotation(emulator, "apps/v1", "deployments", "store-writer") == new_digest,
                         what="the writer to roll with the new credentials")  # fmt: skip


async def test_a_secret_missing_a_key_is_reported_naming_it(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    async with start_operator():
        await create(emulator, fleet_doc())
        await wait_until(lambda: emulator.get("v1", "secrets", "ns1", "cold-nats-credentials"), what="the Secret")
        await emulator.write("v1", "secrets", "ns1", "cold-nats-credentials", {"data": {"services-password": None}})
        ready = await wait_until(lambda: not_ready_because(emulator, "devicefleets", "cold", "NatsCredentialsInvalid"),
                                 what="the fleet to report the Secret")  # fmt: skip
        assert "Secret 'cold-nats-credentials' lacks the keys ['services-password']" in ready["message"]
        await create(emulator, pipeline_doc())
        broken = await wait_until(lambda: not_ready_because(emulator, "pipelines", "store", "NatsCredentialsInvalid"),
                                  what="the pipeline to report the fleet's Secret")  # fmt: skip
        assert "services-password" in broken["message"]


def not_ready_because(emulator: ApiServerEmulator, plural: str, name: str, reason: str) -> dict[str, Any] | None:
    found = has_condition(emulator, plural, name, "Ready", "False")
    return found if found and found["reason"] == reason else None
