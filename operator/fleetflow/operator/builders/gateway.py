"""A fleet's gateway: ConfigMap, device-credentials Secret, StatefulSet, Service, PodDisruptionBudget and HPA."""

import base64
from collections.abc import Sequence
from pathlib import Path

from fleetflow.api import DeviceFleet
from fleetflow.api.common import SecretKeyRef
from fleetflow.api.tls import CERT_KEY, KEY_KEY, CaSecretRef
from fleetflow.operator import nats_credentials
from fleetflow.operator.builders import nats, shaping
from fleetflow.operator.builders.common import (
    CONFIG_KEY,
    OPS_PORT,
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
from fleetflow.runtime.config import device_certificate_mode, gateway_config

HTTP_PORT = 8080
GRPC_PORT = 9090
COAP_PORT = 5683  # UDP, the port RFC 7252 assigns to coap://
SECRET_DIR = "/var/run/fleetflow/device-secret"
TLS_DIR = "/var/run/fleetflow/gateway-tls"  # spec.gateway.tls: the certificate devices' HTTP and gRPC use
DEVICE_CA_DIR = "/var/run/fleetflow/device-ca"  # spec.gateway.tls.clientAuth: the CA of devices' certificates
BUFFER_DIR = "/var/lib/fleetflow/buffer"
# Each replica's outage buffer is a volume of its own; the gateway caps what it buffers at 256 MiB by default
# (FLEETFLOW_BUFFER_MAX_BYTES), the rest is room for the file system.
BUFFER_VOLUME_SIZE = "1Gi"


def name(fleet: DeviceFleet) -> str:
    """The StatefulSet, Service, PodDisruptionBudget and HorizontalPodAutoscaler share this name."""
    return f"{fleet.name}-gateway"


def tls_secret_name(fleet: DeviceFleet) -> str | None:
    """The Secret holding the certificate devices' HTTP and gRPC are served with: the admin's, or the one the
    operator generates."""
    certificate = fleet.spec.gateway.tls
    return certificate.name_or(f"{name(fleet)}-tls") if certificate else None


def config_map_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-gateway-config"


def device_secret_ref(fleet: DeviceFleet) -> SecretKeyRef:
    """The Secret holding the fleet secret all device tokens derive from (default `<fleet>-device-secret`)."""
    return fleet.spec.auth.secret_ref or SecretKeyRef(name=f"{fleet.name}-device-secret", key="secret")


def operator_generates_secret(fleet: DeviceFleet) -> bool:
    """Without `auth.secretRef` the operator creates the Secret once and never rewrites it."""
    return fleet.spec.auth.secret_ref is None


def device_secret(fleet: DeviceFleet, value: bytes) -> JsonObject:
    """The generated device-credentials Secret; `value` is the fleet secret (random, made by the caller)."""
    ref = device_secret_ref(fleet)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(ref.name, namespace_of(fleet), fleet_labels(fleet, "gateway")),
        "type": "Opaque",
        "data": {ref.key: base64.b64encode(value).decode()},
    }


# What the gateway never reads: how many of it run (`kubectl scale` or the HPA) and the managed NATS's servers
# and volume (it reaches NATS through the Service).
GATEWAY_UNREAD = [
    ("fleet", "spec", "gateway", "replicas"),
    ("fleet", "spec", "gateway", "autoscaling"),
    ("fleet", "spec", "nats", "managed"),
]


def gateway_service_config(fleet: DeviceFleet) -> JsonObject:
    config = gateway_config(
        fleet,
        nats_url=nats.nats_url(fleet),
        secret_file=Path(SECRET_DIR) / device_secret_ref(fleet).key,
        listen_port=HTTP_PORT,
        coap_port=COAP_PORT,
        nats_password_file=nats.services_password_file(fleet),
        device_ca_file=device_ca_file(fleet),
    )
    if nats.managed(fleet):  # its MQTT listener admits devices through this gateway's auth callout
        config["mqtt_issuer_seed_file"] = str(nats_credentials.file(nats_credentials.ISSUER_SEED_KEY))
    config.update(nats.client_settings(fleet))
    if fleet.spec.gateway.tls is not None:
        config.update(tls_cert_file=f"{TLS_DIR}/{CERT_KEY}", tls_key_file=f"{TLS_DIR}/{KEY_KEY}")
    return config


def device_ca_ref(fleet: DeviceFleet) -> CaSecretRef | None:
    client_auth = fleet.spec.gateway.client_auth
    return client_auth.ca_secret_ref if client_auth is not None else None


def device_ca_file(fleet: DeviceFleet) -> Path | None:
    """Where the gateway reads the CA of devices' client certificates (None: it asks devices for none)."""
    ref = device_ca_ref(fleet)
    return None if ref is None else Path(DEVICE_CA_DIR) / ref.key


def device_ca_volume(ref: CaSecretRef) -> tuple[JsonObject, JsonObject]:
    """The volume and mount of the device CA: the one key of its Secret (a CA Issuer's Secret holds its private
    key beside it, which the gateway must not get)."""
    volume = {"name": "device-ca", "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": ref.key}]}}
    return volume, {"name": "device-ca", "mountPath": DEVICE_CA_DIR, "readOnly": True}


def rendered_config(fleet: DeviceFleet) -> str:
    return render_config(gateway_service_config(fleet))


def rollout_hash(fleet: DeviceFleet) -> str:
    """The config hash on the pod template, over what the gateway reads: scaling it, or resizing NATS, must not
    restart the running gateways."""
    return component_hash(gateway_service_config(fleet), GATEWAY_UNREAD)


def gateway_config_map(fleet: DeviceFleet) -> JsonObject:
    return config_map(
        config_map_name(fleet),
        namespace_of(fleet),
        fleet_labels(fleet, "gateway"),
        {CONFIG_KEY: rendered_config(fleet)},
    )


def gateway_statefulset(
    fleet: DeviceFleet,
    image: str,
    pull_policy: str,
    resources: JsonObject,
    env: Sequence[JsonObject] = (),
    pull_secrets: Sequence[str] = (),
) -> JsonObject:
    """A StatefulSet, not a Deployment, so that each replica keeps its outage buffer on a volume of its own:
    readings answered 202 while NATS was unreachable survive the pod, and its replacement (same ordinal, same
    volume) publishes them."""
    ref = device_secret_ref(fleet)
    container = service_container(
        "gateway",
        image,
        pull_policy,
        resources,
        ports=[
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "coap", "containerPort": COAP_PORT, "protocol": "UDP"},
        ],
        env=[
            {"name": "FLEETFLOW_LISTEN_HOST", "value": "0.0.0.0"},
            {"name": "FLEETFLOW_GRPC_PORT", "value": str(GRPC_PORT)},
            # Store-and-forward: accepted batches wait here while NATS is unreachable.
            {"name": "FLEETFLOW_BUFFER_DIR", "value": BUFFER_DIR},
            *env,
        ],
    )
    container["volumeMounts"] += [
        {"name": "device-secret", "mountPath": SECRET_DIR, "readOnly": True},
        {"name": "buffer", "mountPath": BUFFER_DIR},
    ]
    volumes = [
        *service_volumes(config_map_name(fleet)),
        # The whole Secret: during a rotation's overlap `<key>.previous` lies beside the key (items would have to
        # name it, and a named item that is missing keeps the pod from starting).
        {"name": "device-secret", "secret": {"secretName": ref.name}},
    ]
    if nats.managed(fleet):
        keys = [nats_credentials.SERVICES_PASSWORD_KEY, nats_credentials.ISSUER_SEED_KEY]
        container["volumeMounts"].append(nats_credentials.mount())
        volumes.append(nats_credentials.volume(fleet, keys))
    client_volumes, client_mounts = nats.client_volumes(fleet)
    volumes += client_volumes
    container["volumeMounts"] += client_mounts
    certificate = tls_secret_name(fleet)
    if certificate is not None:
        # Readable by the gateway's group (the pod's fsGroup) only: it holds the private key.
        secret = {"secretName": certificate, "defaultMode": 0o440}
        volumes.append({"name": "gateway-tls", "secret": secret})
        container["volumeMounts"].append({"name": "gateway-tls", "mountPath": TLS_DIR, "readOnly": True})
    if (ca_ref := device_ca_ref(fleet)) is not None:
        ca_volume, ca_mount = device_ca_volume(ca_ref)
        volumes.append(ca_volume)
        container["volumeMounts"].append(ca_mount)
    spec: JsonObject = {
        "serviceName": pods_service_name(fleet),
        "selector": {"matchLabels": selector_labels(fleet.name, "gateway")},
        # Replicas are alike: start and stop them together. A rolling update replaces one pod at a time.
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate"},
        "template": pod_template(
            fleet_labels(fleet, "gateway"),
            [container],
            volumes,
            rollout_hash(fleet),
            terminationGracePeriodSeconds=30,
        ),
        "volumeClaimTemplates": [
            {
                "metadata": {"name": "buffer", "labels": fleet_labels(fleet, "gateway")},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": BUFFER_VOLUME_SIZE}}},
            }
        ],
    }
    if fleet.spec.gateway.autoscaling is None:
        spec = {"replicas": fleet.spec.gateway.replicas, **spec}
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(name(fleet), namespace_of(fleet), fleet_labels(fleet, "gateway")),
        "spec": spec,
    }
    selector = selector_labels(fleet.name, "gateway")
    return shaping.shaped(statefulset, "gateway", fleet.spec.gateway.pod, selector, pull_secrets)


def gateway_service(fleet: DeviceFleet) -> JsonObject:
    """Devices' HTTP (and WebSocket sessions on it), gRPC and CoAP (UDP); `spec.gateway.service` may publish it as
    a NodePort or LoadBalancer."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name(fleet), namespace_of(fleet), fleet_labels(fleet, "gateway")),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(fleet.name, "gateway"),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "coap", "port": COAP_PORT, "targetPort": "coap", "protocol": "UDP"},
            ],
        },
    }
    return shaping.published(service, fleet.spec.gateway.service)


def pods_service_name(fleet: DeviceFleet) -> str:
    return f"{name(fleet)}-pods"


def gateway_pods_service(fleet: DeviceFleet) -> JsonObject:
    """A headless Service over the gateway pods: the StatefulSet's governing Service (stable pod names) and what
    the chart's ServiceMonitor scrapes (the ops port, /metrics). Apart from the devices' Service, so that publishing
    that one (NodePort, LoadBalancer) never publishes the ops port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pods_service_name(fleet), namespace_of(fleet), fleet_labels(fleet, "gateway")),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(fleet.name, "gateway"),
            "ports": [{"name": "ops", "port": OPS_PORT, "targetPort": "ops", "protocol": "TCP"}],
        },
    }


def gateway_pdb(fleet: DeviceFleet) -> JsonObject:
    """At most one gateway pod is evicted at a time; with one replica, a drain is still possible."""
    return pdb(name(fleet), namespace_of(fleet), fleet_labels(fleet, "gateway"), selector_labels(fleet.name, "gateway"))


def gateway_hpa(fleet: DeviceFleet) -> JsonObject | None:
    scaling = fleet.spec.gateway.autoscaling
    if scaling is None:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(name(fleet), namespace_of(fleet), fleet_labels(fleet, "gateway")),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name(fleet)},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization},
                    },
                }
            ],
        },
    }


def endpoints(fleet: DeviceFleet) -> dict[str, str]:
    """Where devices and services reach the fleet, as shown in `status.gateway.endpoints`."""
    host = f"{name(fleet)}.{namespace_of(fleet)}.svc"
    scheme = "https" if fleet.spec.gateway.tls else "http"
    found = {
        "http": f"{scheme}://{host}:{HTTP_PORT}",
        "grpc": f"{host}:{GRPC_PORT}",
        # The WebSocket route is on the HTTP port, behind the same TLS; CoAP has no DTLS (docs/devices.md).
        "ws": f"{'wss' if fleet.spec.gateway.tls else 'ws'}://{host}:{HTTP_PORT}",
        "coap": f"coap://{host}:{COAP_PORT}",
        "nats": nats.nats_url(fleet),
    }
    if device_certificate_mode(fleet) == "Required":  # the gateway turns CoAP off: no DTLS for a certificate
        del found["coap"]
    if nats.managed(fleet):
        found["mqtt"] = nats.mqtt_endpoint(fleet)
    return found


def gateway_objects(
    fleet: DeviceFleet,
    image: str,
    pull_policy: str,
    resources: JsonObject,
    env: Sequence[JsonObject] = (),
    pull_secrets: Sequence[str] = (),
) -> list[JsonObject]:
    """The gateway's objects in apply order (the device Secret is handled apart: it is created, never patched)."""
    objects = [
        gateway_config_map(fleet),
        gateway_service(fleet),
        gateway_pods_service(fleet),
        gateway_statefulset(fleet, image, pull_policy, resources, env, pull_secrets),
        gateway_pdb(fleet),
    ]
    hpa = gateway_hpa(fleet)
    return [*objects, hpa] if hpa else objects
