"""Pieces every builder shares: names, labels, metadata, security contexts, probes and config volumes."""

import copy
import hashlib
from collections.abc import Iterable
from typing import Any

import yaml

from fleetflow.api import DeviceFleet, Pipeline

PART_OF = "fleetflow"
MANAGED_BY = "fleetflow-operator"
CONFIG_DIR = "/etc/fleetflow"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
CONFIG_KEY = "config.yaml"
CONFIG_HASH_ANNOTATION = "fleetflow.io/config-hash"
OPS_PORT = 8081
SERVICE_UID = 10001

JsonObject = dict[str, Any]


def labels(instance: str, component: str, **extra: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels; `selector_labels` is the stable subset used by selectors."""
    return {
        **selector_labels(instance, component),
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **extra,
    }


def selector_labels(instance: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"fleetflow-{component}", "app.kubernetes.io/instance": instance}


def fleet_labels(fleet: DeviceFleet, component: str) -> dict[str, str]:
    return labels(fleet.name, component, **{"fleetflow.io/fleet": fleet.name})


def pipeline_labels(pipeline: Pipeline, component: str) -> dict[str, str]:
    return labels(
        pipeline.name, component, **{"fleetflow.io/fleet": pipeline.fleet, "fleetflow.io/pipeline": pipeline.name}
    )


def metadata(name: str, namespace: str | None, object_labels: dict[str, str]) -> JsonObject:
    meta: JsonObject = {"name": name, "labels": dict(object_labels)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def namespace_of(resource: DeviceFleet | Pipeline) -> str:
    """The namespace children go to; a resource read from the API always has one."""
    return resource.metadata.namespace or "default"


def render_config(config: JsonObject) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def config_hash(*texts: str) -> str:
    """Put on the pod template so that a changed ConfigMap rolls the pods."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def component_hash(config: JsonObject, unread: Iterable[tuple[str, ...]]) -> str:
    """The config hash over what one component reads. `unread` lists the paths into `config` it never reads
    (another component's replicas, the NATS volume): a change there patches its ConfigMap, which the component
    reads only at start, but must not restart its pods."""
    view = copy.deepcopy(config)
    for path in unread:
        parent: Any = view
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return config_hash(render_config(view))


def config_map(name: str, namespace: str | None, object_labels: dict[str, str], data: dict[str, str]) -> JsonObject:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(name, namespace, object_labels), "data": data}


def container_security_context() -> JsonObject:
    """Restricted Pod Security Standard: no privilege escalation, no capabilities, read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security_context(uid: int = SERVICE_UID) -> JsonObject:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def http_probe(path: str, port: int | str, period: int = 10, failures: int = 3) -> JsonObject:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def ops_probes() -> JsonObject:
    """Every fleetflow service serves /healthz (alive) and /readyz (can do its work) on the ops port."""
    return {
        "livenessProbe": {**http_probe("/healthz", "ops", period=10, failures=6), "initialDelaySeconds": 5},
        "readinessProbe": http_probe("/readyz", "ops", period=5, failures=2),
        "startupProbe": http_probe("/healthz", "ops", period=2, failures=30),
    }


def service_container(
    component: str, image: str, pull_policy: str, resources: JsonObject, ports: list[JsonObject], env: list[JsonObject]
) -> JsonObject:
    """The one fleetflow image, started as `fleetflow <component> --config /etc/fleetflow/config.yaml`."""
    return {
        "name": component,
        "image": image,
        "imagePullPolicy": pull_policy,
        "args": [component, "--config", CONFIG_FILE],
        "command": ["fleetflow"],
        "env": [
            {"name": "FLEETFLOW_LOG_FORMAT", "value": "json"},
            {"name": "FLEETFLOW_OPS_HOST", "value": "0.0.0.0"},
            {"name": "FLEETFLOW_OPS_PORT", "value": str(OPS_PORT)},
            {"name": "OTEL_SERVICE_NAME", "value": f"fleetflow-{component}"},
            # The downward API: OpenTelemetry's resource names the pod, namespace and node of every span.
            *(
                {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
                for name, path in (
                    ("POD_NAME", "metadata.name"),
                    ("POD_NAMESPACE", "metadata.namespace"),
                    ("NODE_NAME", "spec.nodeName"),
                )
            ),
            *env,
        ],
        "ports": [*ports, {"name": "ops", "containerPort": OPS_PORT, "protocol": "TCP"}],
        **ops_probes(),
        "resources": resources,
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def service_volumes(config_map_name: str) -> list[JsonObject]:
    return [
        {"name": "config", "configMap": {"name": config_map_name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]


def pod_template(
    pod_labels: dict[str, str], containers: list[JsonObject], volumes: list[JsonObject], config_digest: str, **spec: Any
) -> JsonObject:
    return {
        "metadata": {"labels": dict(pod_labels), "annotations": {CONFIG_HASH_ANNOTATION: config_digest}},
        "spec": {
            "securityContext": pod_security_context(),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": containers,
            "volumes": volumes,
            **spec,
        },
    }


def owner_reference(owner: JsonObject) -> JsonObject:
    """The ownerReference that makes the garbage collector delete a child with its custom resource."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned(child: JsonObject, owner: JsonObject) -> JsonObject:
    """A copy of `child` carrying `owner`'s controller reference."""
    meta = {**child["metadata"], "ownerReferences": [owner_reference(owner)]}
    return {**child, "metadata": meta}


def pdb(name: str, namespace: str | None, object_labels: dict[str, str], selector: dict[str, str]) -> JsonObject:
    """A PodDisruptionBudget that lets a drain evict one of the selected pods at a time, even when only one runs."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name, namespace, object_labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(selector)}},
    }
