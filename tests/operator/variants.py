"""DeviceFleet and Pipeline documents the operator tests render: minimal, full, external NATS, 3-server NATS,
shaped by an admin (every pod and Service override) and a pipeline with two processor partitions."""

from typing import Any

from fleetflow.api import DeviceFleet, Pipeline, parse_resource

API_VERSION = "fleetflow.io/v1alpha1"


def fleet_doc(name: str = "cold", namespace: str = "ns1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "DeviceFleet", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}  # fmt: skip


def pipeline_doc(name: str = "store", namespace: str = "ns1", fleet: str = "cold", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Pipeline", "metadata": {"name": name, "namespace": namespace},
            "spec": {"fleetRef": {"name": fleet}, **spec}}  # fmt: skip


FULL_FLEET_SPEC: dict[str, Any] = {
    "devices": {"idPattern": "^[a-z][a-z0-9-]{1,62}$", "labels": [{"match": "^sim-", "labels": {"site": "lab"}}]},
    "auth": {"mode": "token", "secretRef": {"name": "cold-tokens", "key": "fleet-secret"}},
    "gateway": {
        "replicas": 3,
        "autoscaling": {"minReplicas": 2, "maxReplicas": 8, "targetCpuUtilization": 60},
        "maxBatchReadings": 500,
        "maxBodyBytes": 2097152,
        "rateLimit": {"readingsPerSecond": 50, "burst": 200},
    },
    "nats": {"managed": {"replicas": 3, "storageSize": "20Gi", "storageClassName": "fast-ssd"}},
    "streams": {"maxAge": "3d", "maxBytes": "5Gi", "replicas": 3, "duplicateWindow": "5m", "partitions": 16,
                "deleteOnRemoval": True},
}  # fmt: skip

# Mutual TLS for devices: a certificate for the gateway, and the CA of the devices' certificates.
DEVICE_CERTIFICATES_GATEWAY: dict[str, Any] = {
    "tls": {"secretName": "cold-gateway-tls",
            "clientAuth": {"mode": "Required", "caSecretRef": {"name": "cold-device-ca"}}},
}  # fmt: skip

FULL_PIPELINE_SPEC: dict[str, Any] = {
    "sink": {
        "kind": "cassandra",
        "ttl": "90d",
        "cassandra": {
            "contactPoints": ["cassandra-0.cassandra", "cassandra-1.cassandra"],
            "localDc": "dc1",
            "keyspace": "telemetry",
            "replication": {"dc1": 3},
            "credentialsSecretRef": {"name": "cassandra-credentials", "key": "password"},
        },
    },
    "processor": {"replicas": 4},
    "writer": {"replicas": 2, "batchMessages": 512},
    "delivery": {"maxDeliver": 10, "ackWait": "1m", "maxAckPending": 1000, "deleteOnRemoval": True},
}


# What an admin shapes: every pod override, a published gateway and MQTT listener.
POD_OVERRIDES: dict[str, Any] = {
    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    "nodeSelector": {"node-role.example.com/iot": "true"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "iot", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"app": "noisy"}}, "topologyKey": "kubernetes.io/hostname"}}]},
    },
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "DoNotSchedule"}],
    "priorityClassName": "iot-critical",
    "imagePullSecrets": [{"name": "component-registry"}],
    "labels": {"team": "iot"},
    "annotations": {"example.com/owner": "iot-team"},
}  # fmt: skip
PUBLISHED = {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"},
             "loadBalancerSourceRanges": ["203.0.113.0/24"], "externalTrafficPolicy": "Local"}  # fmt: skip
SHAPED_FLEET_SPEC: dict[str, Any] = {
    "gateway": {"pod": POD_OVERRIDES, "service": PUBLISHED},
    "nats": {"managed": {"pod": POD_OVERRIDES, "mqttService": {"type": "NodePort"}}},
    "api": {"replicas": 2, "pod": POD_OVERRIDES},
}
SHAPED_PIPELINE_SPEC: dict[str, Any] = {"processor": {"pod": POD_OVERRIDES}, "writer": {"pod": POD_OVERRIDES}}


# A hub of two edge sites (docs/edge.md): three servers over TLS, the leaf-node Service published.
EDGE_FLEET_SPEC: dict[str, Any] = {
    "nats": {
        "managed": {
            "replicas": 3,
            "tls": {"secretName": "cold-nats-tls"},
            "leafnodeService": {
                "type": "LoadBalancer",
                "annotations": {"lb.example/internal": "false"},
                "loadBalancerSourceRanges": ["203.0.113.0/24"],
            },
        }
    },
    "networkPolicy": {"enabled": True, "sites": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]},
    "sites": [
        {"name": "depot-a", "pipelines": ["cold-edge"], "forward": {"readings": True, "records": ["alerts"]}},
        {"name": "depot-b", "pipelines": ["cold-edge"], "forward": {"readings": False}},
    ],
}


def fleet(doc: dict[str, Any]) -> DeviceFleet:
    resource = parse_resource(doc)
    assert isinstance(resource, DeviceFleet)
    return resource


def pipeline(doc: dict[str, Any]) -> Pipeline:
    resource = parse_resource(doc)
    assert isinstance(resource, Pipeline)
    return resource


def variants() -> dict[str, tuple[DeviceFleet, Pipeline]]:
    """Name -> (fleet, pipeline) for every variant the rendered objects are validated in."""
    return {
        "minimal": (fleet(fleet_doc()), pipeline(pipeline_doc())),
        "full": (fleet(fleet_doc(**FULL_FLEET_SPEC)), pipeline(pipeline_doc(**FULL_PIPELINE_SPEC))),
        "external-nats": (
            fleet(fleet_doc(nats={"external": {"url": "nats://nats.shared.svc:4222"}})),
            pipeline(pipeline_doc()),
        ),
        "nats-3": (fleet(fleet_doc(nats={"managed": {"replicas": 3}})), pipeline(pipeline_doc())),
        "shaped": (fleet(fleet_doc(**SHAPED_FLEET_SPEC)), pipeline(pipeline_doc(**SHAPED_PIPELINE_SPEC))),
        "two-partitions": (
            fleet(fleet_doc(streams={"partitions": 2})),
            pipeline(pipeline_doc(processor={"replicas": 2})),
        ),
        "edge-sites": (fleet(fleet_doc(**EDGE_FLEET_SPEC)), pipeline(pipeline_doc(name="cold-edge"))),
        "device-certificates": (fleet(fleet_doc(gateway=DEVICE_CERTIFICATES_GATEWAY)), pipeline(pipeline_doc())),
    }
