"""A fleet's NetworkPolicies (`spec.networkPolicy`): ingress to every pod of the fleet and of its pipelines is
denied, then allowed where the data path needs it. Policies add up, so each allowance is its own object."""

from fleetflow.api import DeviceFleet
from fleetflow.api.core import NetworkPolicyPeer
from fleetflow.operator.builders import appapi, nats, sites
from fleetflow.operator.builders.common import JsonObject, fleet_labels, metadata, namespace_of, selector_labels

API_VERSION = "networking.k8s.io/v1"
FLEET_LABEL = "fleetflow.io/fleet"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace


def default_deny_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-default-deny"


def devices_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-devices"


def mqtt_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-mqtt-devices"


def applications_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-api-clients"


def nats_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-nats-clients"


def metrics_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-metrics"


def sites_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-edge-sites"


def all_names(fleet: DeviceFleet) -> list[str]:
    """Every policy the fleet may have, for removal when the spec no longer asks for one."""
    return [default_deny_name(fleet), devices_name(fleet), mqtt_name(fleet), applications_name(fleet),
            nats_name(fleet), metrics_name(fleet), sites_name(fleet)]  # fmt: skip


def _policy(fleet: DeviceFleet, name: str, pods: dict[str, str], ingress: list[JsonObject]) -> JsonObject:
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": metadata(name, namespace_of(fleet), fleet_labels(fleet, "network")),
        "spec": {"podSelector": {"matchLabels": pods}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def _ports(*names: str, protocol: str = "TCP") -> list[JsonObject]:
    return [{"port": name, "protocol": protocol} for name in names]


def _from_peers(peers: list[NetworkPolicyPeer] | None, ports: list[JsonObject]) -> list[JsonObject]:
    """One rule: from `peers`, or from anywhere when the spec names none."""
    return [{"ports": ports, **({"from": [peer.to_k8s() for peer in peers]} if peers is not None else {})}]


def _from_devices(fleet: DeviceFleet, ports: list[JsonObject]) -> list[JsonObject]:
    return _from_peers(fleet.spec.network_policy.devices, ports)


def _namespace(name: str) -> JsonObject:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: name}}}


def default_deny(fleet: DeviceFleet) -> JsonObject:
    """No rule: nothing reaches a pod of the fleet unless another policy lets it."""
    return _policy(fleet, default_deny_name(fleet), {FLEET_LABEL: fleet.name}, [])


def devices_to_gateway(fleet: DeviceFleet) -> JsonObject:
    return _policy(fleet, devices_name(fleet), selector_labels(fleet.name, "gateway"),
                   _from_devices(fleet, _ports("http", "grpc") + _ports("coap", protocol="UDP")))  # fmt: skip


def applications_to_api(fleet: DeviceFleet) -> JsonObject:
    """Applications reach the application API's port (its ops port is the metrics policy's)."""
    peers = fleet.spec.network_policy.applications
    return _policy(fleet, applications_name(fleet), selector_labels(fleet.name, appapi.COMPONENT),
                   _from_peers(peers, _ports("http")))  # fmt: skip


def nats_policies(fleet: DeviceFleet, operator_namespace: str | None) -> list[JsonObject]:
    """MQTT devices reach the MQTT port; the fleet's services (gateway, processors, writers) and the operator
    the client port; the servers each other's route port. Without a known operator namespace (an operator run
    outside the cluster), the client port is open to every namespace: NATS still asks every client to log in."""
    if not nats.managed(fleet):
        return []
    operator = _namespace(operator_namespace) if operator_namespace else {"namespaceSelector": {}}
    servers = {"podSelector": {"matchLabels": selector_labels(fleet.name, "nats")}}
    clients = [
        {"from": [{"podSelector": {"matchLabels": {FLEET_LABEL: fleet.name}}}, operator], "ports": _ports("client")},
        {"from": [servers], "ports": _ports("cluster")},
    ]
    nats_pods = selector_labels(fleet.name, "nats")
    return [
        _policy(fleet, mqtt_name(fleet), nats_pods, _from_devices(fleet, _ports("mqtt"))),
        _policy(fleet, nats_name(fleet), nats_pods, clients),
    ]


def edge_sites(fleet: DeviceFleet) -> JsonObject | None:
    """Edge sites reach the leaf-node listener, from `networkPolicy.sites` (unset: anywhere; each site logs in with
    its own password); None for a fleet without sites or with an external NATS."""
    if not sites.served(fleet):
        return None
    peers = fleet.spec.network_policy.sites
    rule = {"ports": _ports(sites.PORT_NAME), **({"from": [p.to_k8s() for p in peers]} if peers is not None else {})}
    return _policy(fleet, sites_name(fleet), selector_labels(fleet.name, "nats"), [rule])


def metrics(fleet: DeviceFleet) -> JsonObject | None:
    """Prometheus in `metricsNamespace` scrapes the services' `ops` port and the NATS exporter's port."""
    namespace = fleet.spec.network_policy.metrics_namespace
    if namespace is None:
        return None
    rule = {"from": [_namespace(namespace)], "ports": _ports("ops", "nats-metrics")}
    return _policy(fleet, metrics_name(fleet), {FLEET_LABEL: fleet.name}, [rule])


def network_policies(fleet: DeviceFleet, operator_namespace: str | None) -> list[JsonObject]:
    """The fleet's policies in apply order (the allowances before the default deny, so that turning policies
    on never cuts a connection the data path needs); empty unless `spec.networkPolicy.enabled`."""
    if not fleet.spec.network_policy.enabled:
        return []
    scrapes, leafnodes = metrics(fleet), edge_sites(fleet)
    return [
        devices_to_gateway(fleet),
        applications_to_api(fleet),
        *nats_policies(fleet, operator_namespace),
        *([leafnodes] if leafnodes else []),
        *([scrapes] if scrapes else []),
        default_deny(fleet),
    ]
