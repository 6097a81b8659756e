"""A fleet's NetworkPolicies, judged by who may reach which port of which pod, the way a CNI reads them."""

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
import pytest

from fleetflow.api import SpecError
from fleetflow.operator.builders import common, network
from tests.operator.test_builders import KUBERNETES_VERSIONS
from tests.operator.variants import fleet, fleet_doc, pipeline_doc
from tests.operator.variants import pipeline as pipeline_of

NS, OPERATOR_NS, MONITORING = "ns1", "fleetflow-system", "monitoring"
NAMESPACE = "kubernetes.io/metadata.name"
DEVICES = [{"ipBlock": {"cidr": "198.51.100.0/24"}}, {"namespaceSelector": {"matchLabels": {"ingress": "yes"}}}]


@dataclass(frozen=True)
class Peer:
    """Where a connection comes from: a pod (labels, namespace and its labels) or an address outside."""

    labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None


def pod_of(component: str, fleet_name: str = "cold") -> dict[str, str]:
    if component in ("processor", "writer"):
        pl = pipeline_of(pipeline_doc(fleet=fleet_name))
        return common.pipeline_labels(pl, component)
    return common.fleet_labels(fleet(fleet_doc(name=fleet_name)), component)


def in_namespace(labels: dict[str, str], namespace: str, **namespace_labels: str) -> Peer:
    return Peer(labels, namespace, {network.NAMESPACE_LABEL: namespace, **namespace_labels})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def peer_matches(rule_peer: dict[str, Any], peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        return peer.ip is not None and ipaddress.ip_address(peer.ip) in ipaddress.ip_network(
            rule_peer["ipBlock"]["cidr"]
        )
    if peer.namespace is None:
        return False
    if "namespaceSelector" in rule_peer:
        if not selects(rule_peer["namespaceSelector"], peer.namespace_labels):
            return False
    elif peer.namespace != NS:
        return False  # a podSelector alone selects pods of the policy's own namespace
    return "podSelector" not in rule_peer or selects(rule_peer["podSelector"], peer.labels)


def allowed(policies: list[dict[str, Any]], pod: dict[str, str], port: str, source: Peer) -> bool:
    """Kubernetes semantics: a pod no policy selects takes everything; a selected pod only what a rule allows."""
    selecting = [p for p in policies if selects(p["spec"]["podSelector"], pod)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"]["ingress"]:
            port_ok = "ports" not in rule or port in [p["port"] for p in rule["ports"]]
            peer_ok = "from" not in rule or any(peer_matches(p, source) for p in rule["from"])
            if port_ok and peer_ok:
                return True
    return False


def policies(**spec: Any) -> list[dict[str, Any]]:
    return network.network_policies(fleet(fleet_doc(**spec)), OPERATOR_NS)


INTERNET = Peer(ip="203.0.113.9")
DEVICE_NET = Peer(ip="198.51.100.7")
INGRESS_CONTROLLER = in_namespace({"app": "ingress-nginx"}, "ingress-nginx", ingress="yes")
OPERATOR = in_namespace({"app.kubernetes.io/name": "fleetflow"}, OPERATOR_NS)
PROMETHEUS = in_namespace({"app": "prometheus"}, MONITORING)
STRANGER = in_namespace({"app": "other"}, "elsewhere")


def test_no_policies_unless_enabled() -> None:
    assert policies() == []
    assert policies(networkPolicy={"metricsNamespace": MONITORING}) == []


def test_devices_reach_only_the_gateways_http_grpc_and_coap_and_mqtt() -> None:
    found = policies(networkPolicy={"enabled": True})
    for port in ("http", "grpc", "coap"):
        assert allowed(found, pod_of("gateway"), port, INTERNET)
    [devices] = [p for p in found if p["metadata"]["name"] == network.devices_name(fleet(fleet_doc()))]
    assert {"port": "coap", "protocol": "UDP"} in devices["spec"]["ingress"][0]["ports"]  # CoAP is UDP
    assert allowed(found, pod_of("nats"), "mqtt", INTERNET)
    assert not allowed(found, pod_of("gateway"), "ops", INTERNET)
    for port in ("client", "cluster", "nats-metrics"):
        assert not allowed(found, pod_of("nats"), port, INTERNET), port
    for component in ("processor", "writer"):
        assert not allowed(found, pod_of(component), "ops", INTERNET), component


def test_devices_can_be_limited_to_networks_and_namespaces() -> None:
    found = policies(networkPolicy={"enabled": True, "devices": DEVICES})
    for source in (DEVICE_NET, INGRESS_CONTROLLER):
        assert allowed(found, pod_of("gateway"), "http", source)
        assert allowed(found, pod_of("nats"), "mqtt", source)
    for source in (INTERNET, STRANGER):
        assert not allowed(found, pod_of("gateway"), "http", source)
        assert not allowed(found, pod_of("nats"), "mqtt", source)


def test_applications_reach_the_api_port_from_where_the_spec_says_and_nothing_else_of_it() -> None:
    found = policies(networkPolicy={"enabled": True})
    assert allowed(found, pod_of("appapi"), "http", STRANGER)
    assert not allowed(found, pod_of("appapi"), "ops", STRANGER)
    apps = in_namespace({"app": "dashboard"}, "apps")
    limited = policies(networkPolicy={"enabled": True, "metricsNamespace": MONITORING,
                                      "applications": [{"namespaceSelector": {"matchLabels": {NAMESPACE: "apps"}}}]})  # fmt: skip
    assert allowed(limited, pod_of("appapi"), "http", apps)
    assert not allowed(limited, pod_of("appapi"), "http", STRANGER)
    assert allowed(limited, pod_of("appapi"), "ops", PROMETHEUS) and not allowed(limited, pod_of("appapi"), "ops", apps)


def test_the_fleets_services_and_the_operator_reach_nats_and_the_servers_each_other() -> None:
    found = policies(networkPolicy={"enabled": True}, nats={"managed": {"replicas": 3}})
    for component in ("gateway", "processor", "writer"):
        assert allowed(found, pod_of("nats"), "client", in_namespace(pod_of(component), NS)), component
    assert allowed(found, pod_of("nats"), "client", OPERATOR)
    assert allowed(found, pod_of("nats"), "cluster", in_namespace(pod_of("nats"), NS))
    assert not allowed(found, pod_of("nats"), "cluster", in_namespace(pod_of("gateway"), NS))
    another_fleet = in_namespace(pod_of("writer", fleet_name="warm"), NS)
    assert not allowed(found, pod_of("nats"), "client", another_fleet)
    assert not allowed(found, pod_of("nats"), "client", STRANGER)


def test_metrics_are_scraped_only_from_the_named_namespace() -> None:
    found = policies(networkPolicy={"enabled": True, "metricsNamespace": MONITORING})
    for component in ("gateway", "processor", "writer"):
        assert allowed(found, pod_of(component), "ops", PROMETHEUS), component
        assert not allowed(found, pod_of(component), "ops", STRANGER), component
    assert allowed(found, pod_of("nats"), "nats-metrics", PROMETHEUS)
    assert not allowed(found, pod_of("nats"), "client", PROMETHEUS)
    without = policies(networkPolicy={"enabled": True})
    assert not allowed(without, pod_of("writer"), "ops", PROMETHEUS)


def test_an_external_nats_gets_no_nats_policies_but_the_rest_stays_denied() -> None:
    found = policies(networkPolicy={"enabled": True}, nats={"external": {"url": "nats://shared:4222"}})
    assert network.nats_name(fleet(fleet_doc())) not in [p["metadata"]["name"] for p in found]
    assert not allowed(found, pod_of("writer"), "ops", INTERNET)


def test_without_a_known_operator_namespace_any_namespace_may_reach_the_client_port() -> None:
    found = network.network_policies(fleet(fleet_doc(networkPolicy={"enabled": True})), None)
    assert allowed(found, pod_of("nats"), "client", STRANGER)
    assert not allowed(found, pod_of("nats"), "nats-metrics", STRANGER)


def test_the_default_deny_comes_last_so_enabling_never_cuts_the_data_path_first() -> None:
    every = policies(networkPolicy={"enabled": True, "metricsNamespace": "m"}, sites=[{"name": "depot-a"}])
    names = [p["metadata"]["name"] for p in every]
    assert names[-1] == "cold-default-deny"
    assert sorted(names) == sorted(network.all_names(fleet(fleet_doc())))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_policy_validates(version: str) -> None:
    for policy in policies(networkPolicy={"enabled": True, "devices": DEVICES, "metricsNamespace": MONITORING}):
        kubernetes_validate.validate(policy, version, strict=True)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"metricsNamespace": "Monitoring"}, r"metricsNamespace = 'Monitoring'"),
        ({"devices": [{"ipBlock": {"cidr": "198.51.100.0"}}]}, r"add the prefix length"),
    ],
)
def test_bad_policy_settings_are_refused_naming_them(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        fleet(fleet_doc(networkPolicy=spec))


def test_edge_sites_reach_the_leafnode_port_from_their_ranges_only_and_nothing_else_of_nats() -> None:
    sites = [{"name": "depot-a"}]
    found = policies(networkPolicy={"enabled": True, "sites": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}, sites=sites)
    assert allowed(found, pod_of("nats"), "leafnodes", INTERNET)
    assert not allowed(found, pod_of("nats"), "leafnodes", DEVICE_NET)
    assert not allowed(found, pod_of("nats"), "client", INTERNET), "a site dials the leaf-node port only"
    anywhere = policies(networkPolicy={"enabled": True}, sites=sites)
    assert allowed(anywhere, pod_of("nats"), "leafnodes", DEVICE_NET), "unset: anywhere (each site logs in)"
    assert not allowed(policies(networkPolicy={"enabled": True}), pod_of("nats"), "leafnodes", INTERNET)
