"""A fleet's application API: ConfigMap, API keys Secret, Deployment (shaped by `spec.api.pod`), Service and
PodDisruptionBudget.

The API reads the stores of the fleet's pipelines whose sink is Cassandra: a SQLite sink on a cluster is a file in
its writer pod's own volume, which no other pod can open. Its keys come from the Secret `<fleet>-api-keys` (key
`keys.json`, the file `fleetflow api-key create --keys-file` writes); the operator creates it empty once and
never rewrites it, and the API re-reads the mounted file when the Secret changes."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.operator import nats_credentials
from fleetflow.operator.builders import nats, shaping
from fleetflow.operator.builders.common import (
    CONFIG_KEY,
    JsonObject,
    component_hash,
    config_map,
    fleet_labels,
    metadata,
    namespace_of,
    pdb,
    pod_template,
    render_config,
    selector_labels,
    service_container,
    service_volumes,
)
from fleetflow.operator.builders.pipeline import CASSANDRA_CREDENTIALS_DIR
from fleetflow.runtime.config import appapi_config

COMPONENT = "appapi"
HTTP_PORT = 8090
KEYS_DIR = "/var/run/fleetflow/api-keys"
KEYS_KEY = "keys.json"
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}
# What the API never reads: how many gateways run and the managed NATS's servers and volume.
APPAPI_UNREAD = [
    ("fleet", "spec", "gateway", "replicas"),
    ("fleet", "spec", "gateway", "autoscaling"),
    ("fleet", "spec", "nats", "managed"),
]


def name(fleet: DeviceFleet) -> str:
    """The Deployment and the Service share this name."""
    return f"{fleet.name}-api"


def config_map_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-api-config"


def keys_secret_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-api-keys"


def url(fleet: DeviceFleet) -> str:
    """Where applications in the cluster reach the API, as `status.gateway.endpoints.api` shows it."""
    return f"http://{name(fleet)}.{namespace_of(fleet)}.svc:{HTTP_PORT}"


def served_pipelines(fleet: DeviceFleet, pipelines: Sequence[Pipeline]) -> list[Pipeline]:
    """The fleet's pipelines whose store the API can read (Cassandra sinks), by name."""
    mine = [p for p in pipelines if p.fleet == fleet.name and p.spec.sink.kind == "cassandra"]
    return sorted(mine, key=lambda p: p.name)


def credentials_secret(pipelines: Sequence[Pipeline]) -> str | None:
    """The Cassandra credentials Secret the API mounts: the first served pipeline's that names one (the API
    logs in to every store with one set of credentials)."""
    for pipeline in pipelines:
        cassandra = pipeline.spec.sink.cassandra
        if cassandra and cassandra.credentials_secret_ref:
            return cassandra.credentials_secret_ref.name
    return None


def appapi_service_config(fleet: DeviceFleet, pipelines: Sequence[Pipeline]) -> JsonObject:
    served = served_pipelines(fleet, pipelines)
    config = appapi_config(
        fleet,
        served,
        nats_url=nats.nats_url(fleet),
        keys_file=Path(KEYS_DIR) / KEYS_KEY,
        listen_port=HTTP_PORT,
        nats_password_file=nats.services_password_file(fleet),
    )
    if credentials_secret(served) is not None:
        config["cassandra_credentials_dir"] = CASSANDRA_CREDENTIALS_DIR
    return config


def appapi_config_map(fleet: DeviceFleet, pipelines: Sequence[Pipeline]) -> JsonObject:
    text = render_config(appapi_service_config(fleet, pipelines))
    return config_map(config_map_name(fleet), namespace_of(fleet), fleet_labels(fleet, COMPONENT), {CONFIG_KEY: text})


def keys_secret(fleet: DeviceFleet) -> JsonObject:
    """The fleet's API keys, none yet: created once, then the user's (kubectl apply a file of created keys)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(keys_secret_name(fleet), namespace_of(fleet), fleet_labels(fleet, COMPONENT)),
        "type": "Opaque",
        "stringData": {KEYS_KEY: json.dumps({"keys": []})},
    }


def _volumes(fleet: DeviceFleet, pipelines: Sequence[Pipeline]) -> tuple[list[JsonObject], list[JsonObject]]:
    """(volumes, mounts) beside the config: the keys, the services' NATS password, the Cassandra credentials."""
    volumes: list[JsonObject] = [{"name": "api-keys", "secret": {"secretName": keys_secret_name(fleet)}}]
    mounts: list[JsonObject] = [{"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True}]
    if nats.managed(fleet):
        volumes.append(nats_credentials.volume(fleet, [nats_credentials.SERVICES_PASSWORD_KEY]))
        mounts.append(nats_credentials.mount())
    secret = credentials_secret(served_pipelines(fleet, pipelines))
    if secret is not None:
        volumes.append({"name": "cassandra-credentials", "secret": {"secretName": secret}})
        mounts.append({"name": "cassandra-credentials", "mountPath": CASSANDRA_CREDENTIALS_DIR, "readOnly": True})
    return volumes, mounts


def appapi_deployment(fleet: DeviceFleet, pipelines: Sequence[Pipeline], image: str, pull_policy: str,
                      resources: JsonObject, env: Sequence[JsonObject] = (),
                      pull_secrets: Sequence[str] = ()) -> JsonObject:  # fmt: skip
    container = service_container(
        COMPONENT,
        image,
        pull_policy,
        resources,
        ports=[{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        env=[{"name": "FLEETFLOW_LISTEN_HOST", "value": "0.0.0.0"}, *env],
    )
    volumes, mounts = _volumes(fleet, pipelines)
    container["volumeMounts"] += mounts
    digest = component_hash(appapi_service_config(fleet, pipelines), APPAPI_UNREAD)
    spec: dict[str, Any] = {
        "replicas": fleet.spec.api.replicas,
        "selector": {"matchLabels": selector_labels(fleet.name, COMPONENT)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        # Open event streams end at SIGTERM; the clients resume from their last event id on the new pod.
        "template": pod_template(
            fleet_labels(fleet, COMPONENT),
            [container],
            [*service_volumes(config_map_name(fleet)), *volumes],
            digest,
            terminationGracePeriodSeconds=30,
        ),
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name(fleet), namespace_of(fleet), fleet_labels(fleet, COMPONENT)),
        "spec": spec,
    }
    return shaping.shaped(
        deployment, COMPONENT, fleet.spec.api.pod, selector_labels(fleet.name, COMPONENT), pull_secrets
    )


def appapi_service(fleet: DeviceFleet) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name(fleet), namespace_of(fleet), fleet_labels(fleet, COMPONENT)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(fleet.name, COMPONENT),
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def appapi_pdb(fleet: DeviceFleet) -> JsonObject:
    """A drain evicts one API pod at a time; clients of the one evicted resume their event streams elsewhere."""
    return pdb(name(fleet), namespace_of(fleet), fleet_labels(fleet, COMPONENT), selector_labels(fleet.name, COMPONENT))


def appapi_objects(fleet: DeviceFleet, pipelines: Sequence[Pipeline], image: str, pull_policy: str,
                   resources: JsonObject, env: Sequence[JsonObject] = (),
                   pull_secrets: Sequence[str] = ()) -> list[JsonObject]:  # fmt: skip
    """The API's objects in apply order (the keys Secret is handled apart: it is created, never patched)."""
    return [
        appapi_config_map(fleet, pipelines),
        appapi_service(fleet),
        appapi_deployment(fleet, pipelines, image, pull_policy, resources, env, pull_secrets),
        appapi_pdb(fleet),
    ]
