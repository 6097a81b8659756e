"""A fleet's managed NATS JetStream: server config, StatefulSet (1 or 3 servers) and its two Services.

Every connection logs in (`fleetflow.runtime.natsauth`): the services and the operator as the services' user,
MQTT devices through the gateway's auth callout, other servers of the cluster with the routes' password. The
secrets come from the fleet's Secret (`fleetflow.operator.nats_credentials`) as environment variables, which
nats.conf names as `$VARIABLE`: no secret is in the ConfigMap."""

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetflow.api import DeviceFleet
from fleetflow.api.devicefleet import max_payload_for
from fleetflow.api.quantities import parse_bytes
from fleetflow.api.tls import CA_KEY, CERT_KEY, KEY_KEY, CaSecretRef, TlsSecret
from fleetflow.operator import nats_credentials
from fleetflow.operator.builders import shaping, sites
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
from fleetflow.runtime import edgelink, natsauth

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
    # Every service and the operator share the services' user, which also serves the callout (no callout_user).
    users=(natsauth.ServiceUser(natsauth.SERVICE_USER, natsauth.from_environment(SERVICES_PASSWORD_ENV)),),
    anonymous_password=natsauth.from_environment(ANONYMOUS_PASSWORD_ENV),
)


# A managed NATS's certificate (spec.nats.managed.tls), in the server pods and, its CA alone, in service pods.
TLS_DIR = "/etc/nats-tls"
TLS_VOLUME = "nats-tls"
CLIENT_TLS_DIR = "/var/run/fleetflow/nats-tls"
CLIENT_TLS_VOLUME = "nats-tls-ca"
# The CA of devices' client certificates, where the MQTT listener requires them (spec.gateway.tls.clientAuth).
DEVICE_CA_DIR = "/etc/nats-device-ca"
DEVICE_CA_VOLUME = "device-ca"
# An external NATS's password (spec.nats.external.passwordSecretRef) in service pods.
CLIENT_LOGIN_DIR = "/var/run/fleetflow/nats-login"
CLIENT_LOGIN_VOLUME = "nats-login"
CLIENT_PASSWORD_FILE = "password"


def statefulset_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-nats"


def client_service_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-nats"


def headless_service_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-nats-headless"


def config_map_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-nats-config"


def mqtt_device_ca(fleet: DeviceFleet) -> CaSecretRef | None:
    """The CA the MQTT listener verifies devices' certificates with: a fleet that requires device certificates
    (spec.gateway.tls.clientAuth.mode Required) on a managed NATS with TLS. nats-server cannot ask for a
    certificate without requiring one, so with Optional its MQTT devices present tokens."""
    client_auth = fleet.spec.gateway.client_auth
    if tls(fleet) is None or client_auth is None or client_auth.mode != "Required":
        return None
    return client_auth.ca_secret_ref


def tls(fleet: DeviceFleet) -> TlsSecret | None:
    """The managed NATS's certificate Secret; None for plain NATS or an external NATS."""
    return fleet.spec.nats.managed.tls if managed(fleet) and fleet.spec.nats.managed else None


def tls_secret_name(fleet: DeviceFleet) -> str | None:
    """The Secret holding the managed NATS's certificate: the admin's, or the one the operator generates."""
    certificate = tls(fleet)
    return certificate.name_or(f"{fleet.name}-nats-tls") if certificate else None


def nats_url(fleet: DeviceFleet) -> str:
    """Where the services reach the fleet's NATS: the external URL, or the managed cluster's client Service
    (`tls://` with a certificate, so that no client ever falls back to plaintext)."""
    if fleet.spec.nats.external is not None:
        return fleet.spec.nats.external.url
    scheme = "tls" if tls(fleet) else "nats"
    return f"{scheme}://{client_service_name(fleet)}.{namespace_of(fleet)}.svc:{CLIENT_PORT}"


def mqtt_endpoint(fleet: DeviceFleet) -> str:
    scheme = "mqtts" if tls(fleet) else "mqtt"
    return f"{scheme}://{client_service_name(fleet)}.{namespace_of(fleet)}.svc:{MQTT_PORT}"


def tls_dns_names(fleet: DeviceFleet) -> list[str]:
    """The names a managed NATS's certificate must hold: the client Service the services dial and every
    server's name in the headless Service the routes dial (add the names MQTT devices use from outside)."""
    namespace, client, headless = namespace_of(fleet), client_service_name(fleet), headless_service_name(fleet)
    return [client, f"{client}.{namespace}", f"{client}.{namespace}.svc", f"*.{headless}.{namespace}.svc"]


def client_settings(fleet: DeviceFleet) -> dict[str, Any]:
    """What a service's settings need to reach the fleet's NATS beyond its URL: the CA it verifies the server
    with, and an external NATS's user and password file (a managed NATS's login is the services' own)."""
    found: dict[str, Any] = {}
    external = fleet.spec.nats.external
    if tls(fleet) or (external and external.ca_secret_ref):
        found["nats_tls_ca_file"] = f"{CLIENT_TLS_DIR}/{CA_KEY}"
    if external and external.user and external.password_secret_ref:
        found.update(nats_user=external.user, nats_password_file=f"{CLIENT_LOGIN_DIR}/{CLIENT_PASSWORD_FILE}")
    return found


def client_volumes(fleet: DeviceFleet) -> tuple[list[JsonObject], list[JsonObject]]:
    """(volumes, mounts) of a service pod for `client_settings`: the CA's key alone, never a private key."""
    volumes, mounts = [], []
    certificate, external = tls_secret_name(fleet), fleet.spec.nats.external
    ca = (certificate, CA_KEY) if certificate else None
    if external and external.ca_secret_ref:
        ca = (external.ca_secret_ref.name, external.ca_secret_ref.key)
    if ca:
        items = [{"key": ca[1], "path": CA_KEY}]
        volumes.append({"name": CLIENT_TLS_VOLUME, "secret": {"secretName": ca[0], "items": items}})
        mounts.append({"name": CLIENT_TLS_VOLUME, "mountPath": CLIENT_TLS_DIR, "readOnly": True})
    if external and external.password_secret_ref:
        ref = external.password_secret_ref
        items = [{"key": ref.key, "path": CLIENT_PASSWORD_FILE}]
        secret = {"secretName": ref.name, "defaultMode": 0o440, "items": items}
        volumes.append({"name": CLIENT_LOGIN_VOLUME, "secret": secret})
        mounts.append({"name": CLIENT_LOGIN_VOLUME, "mountPath": CLIENT_LOGIN_DIR, "readOnly": True})
    return volumes, mounts


def managed(fleet: DeviceFleet) -> bool:
    return fleet.spec.nats.external is None


def services_password_file(fleet: DeviceFleet) -> Path | None:
    """Where a service pod finds the password it logs in to a managed NATS with; None for an external NATS."""
    return nats_credentials.file(nats_credentials.SERVICES_PASSWORD_KEY) if managed(fleet) else None


def server_config(fleet: DeviceFleet) -> str:
    """nats.conf; nats-server expands `$POD_NAME` and the `$NATS_*` secrets from its environment."""
    managed_spec = fleet.spec.nats.managed_or_default
    store_bytes = int(parse_bytes(managed_spec.storage_size) * STORE_SHARE)
    certificate = tls(fleet)
    lines = [
        f"listen: 0.0.0.0:{CLIENT_PORT}",
        # With a certificate the client port takes TLS only.
        *(natsauth.tls_block(f"{TLS_DIR}/{CERT_KEY}", f"{TLS_DIR}/{KEY_KEY}") if certificate else []),
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
        # The hub of edge sites: each site's NATS has a domain of its own, so the centre's needs one too.
        *([f"  domain: {edgelink.HUB_DOMAIN}"] if sites.served(fleet) else []),
        "}",
    ]
    if managed_spec.replicas > 1:
        lines += _cluster(fleet)
    auth = SERVER_AUTH
    if certificate:
        auth = dataclasses.replace(auth, mqtt_tls=(f"{TLS_DIR}/{CERT_KEY}", f"{TLS_DIR}/{KEY_KEY}"))
    if (device_ca := mqtt_device_ca(fleet)) is not None:
        auth = dataclasses.replace(auth, mqtt_device_ca=f"{DEVICE_CA_DIR}/{device_ca.key}")
    if sites.served(fleet):
        linked = sites.linked_accounts(fleet, natsauth.from_environment(SERVICES_PASSWORD_ENV))
        auth = dataclasses.replace(auth, linked=linked)
        tls_files = (f"{TLS_DIR}/{CERT_KEY}", f"{TLS_DIR}/{KEY_KEY}") if certificate else None
        lines.append(sites.leafnodes_config(tls_files).rstrip("\n"))
    return "\n".join(lines) + "\n" + natsauth.server_config(auth)


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
        # Routes verify each other with the certificate's CA.
        *(
            natsauth.tls_block(f"{TLS_DIR}/{CERT_KEY}", f"{TLS_DIR}/{KEY_KEY}", f"{TLS_DIR}/{CA_KEY}", indent="  ")
            if tls(fleet)
            else []
        ),
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
    return env + (sites.env(fleet) if sites.served(fleet) else [])


def nats_config_map(fleet: DeviceFleet) -> JsonObject:
    return config_map(
        config_map_name(fleet), namespace_of(fleet), fleet_labels(fleet, "nats"), {"nats.conf": server_config(fleet)}
    )


def _ports(fleet: DeviceFleet) -> list[JsonObject]:
    return [
        {"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
        {"name": "cluster", "containerPort": CLUSTER_PORT, "protocol": "TCP"},
        {"name": "mqtt", "containerPort": MQTT_PORT, "protocol": "TCP"},
        *sites.container_ports(fleet),
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
        "ports": _ports(fleet),
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
            *([{"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True}] if tls(fleet) else []),
            *(
                [{"name": DEVICE_CA_VOLUME, "mountPath": DEVICE_CA_DIR, "readOnly": True}]
                if mqtt_device_ca(fleet)
                else []
            ),
        ],
    }


def _tls_volumes(fleet: DeviceFleet) -> list[JsonObject]:
    certificate = tls_secret_name(fleet)
    if certificate is None:
        return []
    # Readable by nats-server's group (the pod's fsGroup) only: it holds the private key.
    volumes = [{"name": TLS_VOLUME, "secret": {"secretName": certificate, "defaultMode": 0o440}}]
    if (device_ca := mqtt_device_ca(fleet)) is not None:  # its one key: a CA Issuer's Secret holds its private key too
        items = [{"key": device_ca.key, "path": device_ca.key}]
        volumes.append({"name": DEVICE_CA_VOLUME, "secret": {"secretName": device_ca.name, "items": items}})
    return volumes


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
                        *_tls_volumes(fleet),
                    ],
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            # Hard: two servers on one node fail together and take the JetStream quorum with
                            # them. A node with room for no other server leaves the pod Pending, which shows.
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": selector_labels(fleet.name, "nats")},
                        },
                        {
                            "maxSkew": 1,
                            "topologyKey": "topology.kubernetes.io/zone",
                            "whenUnsatisfiable": "ScheduleAnyway",  # zones where the cluster has them
                            "labelSelector": {"matchLabels": selector_labels(fleet.name, "nats")},
                        },
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
    mqtt, leafnodes = nats_mqtt_service(fleet), sites.leafnode_service(fleet)
    return [
        nats_config_map(fleet),
        nats_headless_service(fleet),
        nats_client_service(fleet),
        *([mqtt] if mqtt else []),
        *([leafnodes] if leafnodes else []),
        nats_statefulset(fleet, image, pull_policy, resources, pull_secrets, exporter_image),
        nats_pdb(fleet),
    ]
