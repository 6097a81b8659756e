"""A fleet's managed NATS JetStream: server config, StatefulSet (1 or 3 servers) and its two Services.

Every connection logs in (`fleetflow.runtime.natsauth`): the services and the operator as the services' user,
MQTT devices through the gateway's auth callout, other servers of the cluster with the routes' password. The
secrets come from the fleet's Secret (`fleetflow.operator.nats_credentials`) as environment variables, which
nats.conf names as `$VARIABLE`: no secret is in the ConfigMap."""

from collections.abc import Sequence
from pathlib import Path

from fleetflow.api import DeviceFleet
from fleetflow.api.devicefleet import max_payload_for
from fleetflow.api.quantities import parse_bytes
from fleetflow.operator import nats_credentials
from fleetflow.operator.builders import shaping
from fleetflow.operator.builders.common import (
    JsonObject,
    config_hash,
    config_map,
    container_security_context,
    fleet_labels,
    http_probe,
    metadata,
    namespace_of,
    pdb,
    pod_security_context,
    selector_labels,
)
from fleetflow.runtime import natsauth

CLIENT_PORT = 4222
CLUSTER_PORT = 6222
MONITOR_PORT = 8222
EXPORTER_PORT = 7777
# The NATS project's own Prometheus exporter; it reads the monitoring endpoint over the pod's loopback.
DEFAULT_EXPORTER_IMAGE = "natsio/prometheus-nats-exporter:0.20.1"
EXPORTER_RESOURCES = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
MQTT_PORT = 1883
NATS_UID = 1000
STORE_DIR = "/data/jetstream"
PID_FILE = "/var/run/nats/nats.pid"
# JetStream leaves a little of the volume free for its own metadata and compaction.
STORE_SHARE = 0.9
ROUTE_USER = "route"
# The environment variables nats.conf takes its secrets from, each filled from a key of the fleet's Secret.
SERVICES_PASSWORD_ENV = "NATS_SERVICES_PASSWORD"
ANONYMOUS_PASSWORD_ENV = "NATS_ANONYMOUS_PASSWORD"
ISSUER_ENV = "NATS_MQTT_ISSUER"
ROUTES_PASSWORD_ENV = "NATS_ROUTES_PASSWORD"
SECRET_ENV = {
    SERVICES_PASSWORD_ENV: nats_credentials.SERVICES_PASSWORD_KEY,
    ANONYMOUS_PASSWORD_ENV: nats_credentials.ANONYMOUS_PASSWORD_KEY,
    ISSUER_ENV: nats_credentials.ISSUER_KEY,
}
ROUTES_ENV = "NATS_ROUTES"  # the route URLs, which carry the routes' password
SERVER_AUTH = natsauth.ServerAuth(
    mqtt_listen=f"0.0.0.0:{MQTT_PORT}",
    issuer=natsauth.from_environment(ISSUER_ENV),
    services_password=natsauth.from_environment(SERVICES_PASSWORD_ENV),
    anonymous_password=natsauth.from_environment(ANONYMOUS_PASSWORD_ENV),
    services_without_credentials=False,  # anything that reached the port would be the services' user
)


def statefulset_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-nats"


def client_service_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-nats"


def headless_service_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-nats-headless"


def config_map_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-nats-config"


def nats_url(fleet: DeviceFleet) -> str:
    """Where the services reach the fleet's NATS: the external URL, or the managed cluster's client Service."""
    if fleet.spec.nats.external is not None:
        return fleet.spec.nats.external.url
    return f"nats://{client_service_name(fleet)}.{namespace_of(fleet)}.svc:{CLIENT_PORT}"


def mqtt_endpoint(fleet: DeviceFleet) -> str:
    return f"mqtt://{client_service_name(fleet)}.{namespace_of(fleet)}.svc:{MQTT_PORT}"


def managed(fleet: DeviceFleet) -> bool:
    return fleet.spec.nats.external is None


def services_password_file(fleet: DeviceFleet) -> Path | None:
    """Where a service pod finds the password it logs in to a managed NATS with; None for an external NATS."""
    return nats_credentials.file(nats_credentials.SERVICES_PASSWORD_KEY) if managed(fleet) else None


def server_config(fleet: DeviceFleet) -> str:
    """nats.conf; nats-server expands `$POD_NAME` and the `$NATS_*` secrets from its environment."""
    managed_spec = fleet.spec.nats.managed_or_default
    store_bytes = int(parse_bytes(managed_spec.storage_size) * STORE_SHARE)
    lines = [
        f"listen: 0.0.0.0:{CLIENT_PORT}",
        # Monitoring has no authentication: only the pod itself (probes, the exporter) may reach it.
        f"http: 127.0.0.1:{MONITOR_PORT}",
        "server_name: $POD_NAME",
        f'pid_file: "{PID_FILE}"',
        # Large enough for the largest message a valid device body becomes, so none is ever unpublishable.
        f"max_payload: {max_payload_for([fleet])}",
        "lame_duck_duration: 30s",
        "lame_duck_grace_period: 10s",
        "jetstream {",
        f'  store_dir: "{STORE_DIR}"',
        f"  max_file_store: {store_bytes}",
        "}",
    ]
    if managed_spec.replicas > 1:
        lines += _cluster(fleet)
    return "\n".join(lines) + "\n" + natsauth.server_config(SERVER_AUTH)


def _cluster(fleet: DeviceFleet) -> list[str]:
    """Servers accept a route only with the routes' password; the routes they dial carry it in their URLs
    (`$NATS_ROUTES`, see `_routes_env`), since nats-server takes no separate credentials for listed routes."""
    return [
        "cluster {",
        f'  name: "{fleet.name}"',
        f"  listen: 0.0.0.0:{CLUSTER_PORT}",
        "  authorization {",
        f"    user: {ROUTE_USER}",
        f"    password: {natsauth.from_environment(ROUTES_PASSWORD_ENV)}",
        "  }",
        f"  routes: {natsauth.from_environment(ROUTES_ENV)}",
        "}",
    ]


def _routes_env(fleet: DeviceFleet) -> JsonObject:
    """The route URLs as a nats.conf list. The kubelet expands `$(NATS_ROUTES_PASSWORD)` when it starts the
    container, so the pod spec holds the reference, not the password."""
    headless = f"{headless_service_name(fleet)}.{namespace_of(fleet)}.svc"
    login = f"{ROUTE_USER}:$({ROUTES_PASSWORD_ENV})"
    urls = [
        f'"nats://{login}@{statefulset_name(fleet)}-{i}.{headless}:{CLUSTER_PORT}"'
        for i in range(fleet.spec.nats.managed_or_default.replicas)
    ]
    return {"name": ROUTES_ENV, "value": "[" + ", ".join(urls) + "]"}


def _env(fleet: DeviceFleet) -> list[JsonObject]:
    secret = nats_credentials.secret_name(fleet)

    def from_secret(variable: str, key: str) -> JsonObject:
        return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}

    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *(from_secret(variable, key) for variable, key in SECRET_ENV.items()),
    ]
    if fleet.spec.nats.managed_or_default.replicas > 1:
        env += [from_secret(ROUTES_PASSWORD_ENV, nats_credentials.ROUTES_PASSWORD_KEY), _routes_env(fleet)]
    return env


def nats_config_map(fleet: DeviceFleet) -> JsonObject:
    return config_map(
        config_map_name(fleet), namespace_of(fleet), fleet_labels(fleet, "nats"), {"nats.conf": server_config(fleet)}
    )


def _ports() -> list[JsonObject]:
    return [
        {"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
        {"name": "cluster", "containerPort": CLUSTER_PORT, "protocol": "TCP"},
        {"name": "mqtt", "containerPort": MQTT_PORT, "protocol": "TCP"},
    ]


def monitor_probe(path: str, period: int, failures: int) -> JsonObject:
    """Monitoring listens on the loopback only, where the kubelet's HTTP probes cannot reach; busybox `wget` of
    the Alpine-based NATS image asks from inside the pod and fails on any status but 2xx."""
    url = f"http://127.0.0.1:{MONITOR_PORT}{path}"
    return {
        "exec": {"command": ["wget", "-q", "-O", "/dev/null", "-T", "2", url]},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def exporter_container(image: str, pull_policy: str) -> JsonObject:
    """prometheus-nats-exporter: server, connection, route, subscription, health and JetStream (streams and
    consumers) metrics on `nats-metrics`, each series labelled with the server's name (the pod's)."""
    return {
        "name": "metrics",
        "image": image,
        "imagePullPolicy": pull_policy,
        "args": [
            f"-port={EXPORTER_PORT}",
            "-varz",
            "-connz",
            "-routez",
            "-subz",
            "-healthz",
            "-jsz=all",
            "-use_internal_server_name",
            f"http://127.0.0.1:{MONITOR_PORT}",
        ],
        "ports": [{"name": "nats-metrics", "containerPort": EXPORTER_PORT, "protocol": "TCP"}],
        "readinessProbe": http_probe("/metrics", "nats-metrics", period=30, failures=3),
        "resources": {kind: dict(values) for kind, values in EXPORTER_RESOURCES.items()},
        "securityContext": container_security_context(),
    }


def _container(fleet: DeviceFleet, image: str, pull_policy: str, resources: JsonObject) -> JsonObject:
    return {
        "name": "nats",
        "image": image,
        "imagePullPolicy": pull_policy,
        "args": ["--config", "/etc/nats-config/nats.conf"],
        "env": _env(fleet),
        "ports": _ports(),
        "startupProbe": monitor_probe("/healthz", period=5, failures=60),
        # Ready only once JetStream is up: a server still catching up with its peers takes no clients.
        "readinessProbe": monitor_probe("/healthz?js-enabled-only=true", period=10, failures=3),
        "livenessProbe": monitor_probe("/healthz?js-enabled-only=true", period=30, failures=3),
        # Lame-duck mode moves clients to the other servers before this one stops.
        "lifecycle": {"preStop": {"exec": {"command": ["nats-server", f"-sl=ldm={PID_FILE}"]}}},
        "resources": resources,
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/nats-config", "readOnly": True},
            {"name": "pid", "mountPath": "/var/run/nats"},
            {"name": "data", "mountPath": "/data"},
        ],
    }


def nats_statefulset(
    fleet: DeviceFleet,
    image: str,
    pull_policy: str,
    resources: JsonObject,
    pull_secrets: Sequence[str] = (),
    exporter_image: str = DEFAULT_EXPORTER_IMAGE,
) -> JsonObject:
    managed = fleet.spec.nats.managed_or_default
    pod_labels = fleet_labels(fleet, "nats")
    claim_spec: JsonObject = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(managed.storage_size)}},
    }
    if managed.storage_class_name:
        claim_spec["storageClassName"] = managed.storage_class_name
    config_text = server_config(fleet)
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(statefulset_name(fleet), namespace_of(fleet), pod_labels),
        "spec": {
            "replicas": managed.replicas,
            "serviceName": headless_service_name(fleet),
            # All servers start together so that a 3-server cluster can form its JetStream meta group.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(fleet.name, "nats")},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {"fleetflow.io/config-hash": config_hash(config_text)},
                },
                "spec": {
                    "securityContext": pod_security_context(NATS_UID),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 60,
                    "containers": [
                        _container(fleet, image, pull_policy, resources),
                        exporter_container(exporter_image, pull_policy),
                    ],
                    "volumes": [
                        {"name": "config", "configMap": {"name": config_map_name(fleet)}},
                        {"name": "pid", "emptyDir": {}},
                    ],
                },
            },
            "volumeClaimTemplates": [
                {"metadata": {"name": "data", "labels": pod_labels}, "spec": claim_spec},
            ],
        },
    }
    return shaping.shaped(statefulset, "nats", managed.pod, selector_labels(fleet.name, "nats"), pull_secrets)


def nats_headless_service(fleet: DeviceFleet) -> JsonObject:
    """Gives every server a stable DNS name for the cluster routes; lists servers before they are ready (and so
    the chart's ServiceMonitor scrapes the metrics of every server, ready or not)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(headless_service_name(fleet), namespace_of(fleet), fleet_labels(fleet, "nats")),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(fleet.name, "nats"),
            "ports": [
                {"name": "client", "port": CLIENT_PORT, "targetPort": "client"},
                {"name": "cluster", "port": CLUSTER_PORT, "targetPort": "cluster"},
                {"name": "nats-metrics", "port": EXPORTER_PORT, "targetPort": "nats-metrics"},
            ],
        },
    }


def nats_client_service(fleet: DeviceFleet) -> JsonObject:
    """What the gateway, processor, writer and MQTT devices connect to."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(client_service_name(fleet), namespace_of(fleet), fleet_labels(fleet, "nats")),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(fleet.name, "nats"),
            "ports": [
                {"name": "client", "port": CLIENT_PORT, "targetPort": "client"},
                {"name": "mqtt", "port": MQTT_PORT, "targetPort": "mqtt"},
            ],
        },
    }


def nats_pdb(fleet: DeviceFleet) -> JsonObject:
    """One server at a time: three servers keep their JetStream quorum through a drain, and lame-duck mode
    moves a single server's clients to the others."""
    selector = selector_labels(fleet.name, "nats")
    return pdb(statefulset_name(fleet), namespace_of(fleet), fleet_labels(fleet, "nats"), selector)


def mqtt_service_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-mqtt"


def nats_mqtt_service(fleet: DeviceFleet) -> JsonObject | None:
    """The MQTT listener alone, published as `spec.nats.managed.mqttService` asks; None when it does not. The
    client port is never published: only the services and the operator use it."""
    overrides = fleet.spec.nats.managed_or_default.mqtt_service
    if overrides is None:
        return None
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(mqtt_service_name(fleet), namespace_of(fleet), fleet_labels(fleet, "nats")),
        "spec": {
            "selector": selector_labels(fleet.name, "nats"),
            "ports": [{"name": "mqtt", "port": MQTT_PORT, "targetPort": "mqtt", "protocol": "TCP"}],
        },
    }
    return shaping.published(service, overrides)


def nats_objects(
    fleet: DeviceFleet,
    image: str,
    pull_policy: str,
    resources: JsonObject,
    pull_secrets: Sequence[str] = (),
    exporter_image: str = DEFAULT_EXPORTER_IMAGE,
) -> list[JsonObject]:
    """Everything a managed NATS needs, in apply order (its credentials Secret is handled apart: it is created,
    never patched); empty when the fleet uses an external NATS."""
    if not managed(fleet):
        return []
    mqtt = nats_mqtt_service(fleet)
    return [
        nats_config_map(fleet),
        nats_headless_service(fleet),
        nats_client_service(fleet),
        *([mqtt] if mqtt else []),
        nats_statefulset(fleet, image, pull_policy, resources, pull_secrets, exporter_image),
        nats_pdb(fleet),
    ]
