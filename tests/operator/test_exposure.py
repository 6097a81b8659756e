"""Devices' endpoints published outside the cluster: the gateway's Ingresses and what the status reports."""

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fleetflow.api import SpecError
from fleetflow.operator.builders import exposure, gateway, nats, network
from tests.operator.test_builders import KUBERNETES_VERSIONS
from tests.operator.variants import fleet, fleet_doc

INGRESS = {
    "className": "nginx",
    "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
    "http": {"host": "telemetry.example.com", "tlsSecretName": "telemetry-tls"},
    "grpc": {"host": "grpc.telemetry.example.com", "tlsSecretName": "grpc-tls",
             "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}},
}  # fmt: skip


def live(service: dict[str, Any], node_ports: dict[str, int], addresses: list[dict[str, str]]) -> dict[str, Any]:
    """The Service as the API server would hold it once Kubernetes assigned node ports and a load balancer."""
    ports = [{**p, "nodePort": node_ports[p["name"]]} for p in service["spec"]["ports"]]
    return {**service, "spec": {**service["spec"], "ports": ports},
            "status": {"loadBalancer": {"ingress": addresses}}}  # fmt: skip


def test_one_ingress_per_protocol_to_the_gateway_service_with_tls_and_the_class() -> None:
    f = fleet(fleet_doc(gateway={"ingress": INGRESS}))
    http, grpc = exposure.gateway_ingresses(f)
    assert http["metadata"]["name"] == "cold-gateway-http" and grpc["metadata"]["name"] == "cold-gateway-grpc"
    for ingress, host, port in ((http, "telemetry.example.com", gateway.HTTP_PORT),
                                (grpc, "grpc.telemetry.example.com", gateway.GRPC_PORT)):  # fmt: skip
        (rule,) = ingress["spec"]["rules"]
        assert rule["host"] == host
        assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "cold-gateway", "port": {"number": port}}
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert ingress["spec"]["tls"][0]["hosts"] == [host]
        assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert "nginx.ingress.kubernetes.io/backend-protocol" not in http["metadata"]["annotations"]
    assert grpc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert exposure.gateway_ingresses(fleet(fleet_doc())) == []
    only_http = fleet(fleet_doc(gateway={"ingress": {"http": {"host": "t.example.com"}}}))
    (plain,) = exposure.gateway_ingresses(only_http)
    assert "tls" not in plain["spec"] and "annotations" not in plain["metadata"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_ingresses_validate(version: str) -> None:
    for ingress in exposure.gateway_ingresses(fleet(fleet_doc(gateway={"ingress": INGRESS}))):
        kubernetes_validate.validate(ingress, version, strict=True)


def test_status_reports_ingress_hosts_with_their_scheme() -> None:
    f = fleet(fleet_doc(gateway={"ingress": INGRESS}))
    assert exposure.external_endpoints(f, None, None) == {
        "httpExternal": "https://telemetry.example.com",
        "wsExternal": "wss://telemetry.example.com",
        "grpcExternal": "grpc.telemetry.example.com:443",
    }


def test_status_reports_a_load_balancers_address_once_assigned_and_nothing_while_pending() -> None:
    f = fleet(fleet_doc(gateway={"service": {"type": "LoadBalancer"}},
                        nats={"managed": {"mqttService": {"type": "LoadBalancer"}}}))  # fmt: skip
    service, mqtt = gateway.gateway_service(f), nats.nats_mqtt_service(f)
    assert mqtt is not None
    pending = live(service, {"http": 30080, "grpc": 30090, "coap": 30683}, [])
    assert exposure.external_endpoints(f, pending, None) == {
        "httpExternal": "http://<node>:30080",  # a pending load balancer's node ports already work
        "wsExternal": "ws://<node>:30080",
        "grpcExternal": "<node>:30090",
        "coapExternal": "coap://<node>:30683",
    }
    assigned = live(service, {"http": 30080, "grpc": 30090, "coap": 30683}, [{"ip": "203.0.113.10"}])
    mqtt_assigned = live(mqtt, {"mqtt": 31883}, [{"hostname": "mqtt.lb.example.com"}])
    assert exposure.external_endpoints(f, assigned, mqtt_assigned) == {
        "httpExternal": "http://203.0.113.10:8080",
        "wsExternal": "ws://203.0.113.10:8080",
        "grpcExternal": "203.0.113.10:9090",
        "coapExternal": "coap://203.0.113.10:5683",
        "mqttExternal": "mqtt://mqtt.lb.example.com:1883",
    }


def test_status_reports_node_ports_and_nothing_for_a_cluster_ip() -> None:
    f = fleet(fleet_doc(gateway={"service": {"type": "NodePort"}}))
    node_port = live(gateway.gateway_service(f), {"http": 31080, "grpc": 31090, "coap": 31683}, [])
    assert exposure.external_endpoints(f, node_port, None)["httpExternal"] == "http://<node>:31080"
    assert exposure.external_endpoints(f, node_port, None)["coapExternal"] == "coap://<node>:31683"
    plain = fleet(fleet_doc())
    assert exposure.external_endpoints(plain, gateway.gateway_service(plain), None) == {}


@pytest.mark.parametrize(
    ("ingress", "message"),
    [
        ({"http": {"host": "Telemetry.Example.com"}}, r"host = 'Telemetry\.Example\.com'"),
        ({"grpc": {"host": "grpc.example.com", "tlsSecretName": "Bad_Name"}}, r"tlsSecretName = 'Bad_Name'"),
    ],
)
def test_bad_ingress_settings_are_refused_naming_them(ingress: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        fleet(fleet_doc(gateway={"ingress": ingress}))


PRODUCTION = Path(__file__).resolve().parents[2] / "examples" / "cluster" / "production"


def test_the_production_example_renders_valid_objects_and_its_certificate_covers_its_hosts() -> None:
    f = fleet(yaml.safe_load((PRODUCTION / "fleet.yaml").read_text()))
    objects = [
        *nats.nats_objects(f, "nats:x", "IfNotPresent", {}, ("regcred",)),
        *gateway.gateway_objects(f, "img", "IfNotPresent", {}, pull_secrets=("regcred",)),
        *exposure.gateway_ingresses(f),
        *network.network_policies(f, "fleetflow-system"),
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[0], strict=True)
    certificate = yaml.safe_load((PRODUCTION / "certificate.yaml").read_text())
    hosts = {rule["host"] for ingress in exposure.gateway_ingresses(f) for rule in ingress["spec"]["rules"]}
    secrets = {tls["secretName"] for ingress in exposure.gateway_ingresses(f) for tls in ingress["spec"]["tls"]}
    assert hosts == set(certificate["spec"]["dnsNames"]) and hosts
    assert secrets == {certificate["spec"]["secretName"]}
    assert certificate["metadata"]["namespace"] == f.metadata.namespace


def test_the_production_examples_internal_certificates_name_what_their_clients_dial() -> None:
    f = fleet(yaml.safe_load((PRODUCTION / "fleet.yaml").read_text()))
    documents = list(yaml.safe_load_all((PRODUCTION / "internal-tls.yaml").read_text()))
    certificates = {d["spec"]["secretName"]: d["spec"] for d in documents if d["kind"] == "Certificate"}
    nats_tls, gateway_tls = nats.tls(f), f.spec.gateway.tls
    assert nats_tls is not None and gateway_tls is not None
    assert set(nats.tls_dns_names(f)) <= set(certificates[nats_tls.secret_name]["dnsNames"])
    gateway_host = gateway.endpoints(f)["http"].removeprefix("https://").rsplit(":", 1)[0]
    assert gateway_host in certificates[gateway_tls.secret_name]["dnsNames"]
    issuers = {d["metadata"]["name"] for d in documents if d["kind"] == "Issuer"}
    assert all(c["issuerRef"]["name"] in issuers for c in certificates.values())
    assert {d["metadata"]["namespace"] for d in documents} == {f.metadata.namespace}


def test_published_endpoints_say_when_they_speak_tls() -> None:
    f = fleet(fleet_doc(gateway={"service": {"type": "LoadBalancer"}, "tls": {"secretName": "g"}},
                        nats={"managed": {"tls": {"secretName": "n"}, "mqttService": {"type": "LoadBalancer"}}}))  # fmt: skip
    mqtt = nats.nats_mqtt_service(f)
    assert mqtt is not None
    address = [{"ip": "203.0.113.10"}]
    found = exposure.external_endpoints(f, live(gateway.gateway_service(f), {"http": 1, "grpc": 2, "coap": 4}, address),
                                        live(mqtt, {"mqtt": 3}, address))  # fmt: skip
    assert found["httpExternal"] == "https://203.0.113.10:8080"
    assert found["wsExternal"] == "wss://203.0.113.10:8080"
    assert found["coapExternal"] == "coap://203.0.113.10:5683"  # no DTLS: see docs/devices.md
    assert found["mqttExternal"] == "mqtts://203.0.113.10:1883"
    assert nats.nats_url(f).startswith("tls://") and nats.mqtt_endpoint(f).startswith("mqtts://")


# --- Gateway API routes ----------------------------------------------------------------------------------

# The HTTPRoute and GRPCRoute v1 schemas of the Gateway API's standard-install CRDs (kubernetes-validate has no
# Gateway API): see "source" in the file for where they come from.
GATEWAY_API = json.loads((Path(__file__).parent / "schemas" / "gateway-api-v1.6.1-routes.json").read_text())
ROUTES = {
    "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}],
    "http": {"hostnames": ["telemetry.example.com"]},
    "grpc": {"hostnames": ["grpc.example.com", "*.grpc.example.com"]},
}
LISTENERS = {"spec": {"listeners": [{"name": "http", "protocol": "HTTP", "port": 80},
                                    {"name": "https", "protocol": "HTTPS", "port": 443}]}}  # fmt: skip


def route_errors(route: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(GATEWAY_API["schemas"][route["kind"]])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(route)]


def test_an_httproute_and_a_grpcroute_to_the_gateway_service_on_the_named_gateway() -> None:
    f = fleet(fleet_doc(gateway={"routes": ROUTES}))
    http, grpc = exposure.gateway_routes(f)
    assert (http["kind"], grpc["kind"]) == ("HTTPRoute", "GRPCRoute")
    assert http["apiVersion"] == grpc["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert http["metadata"]["name"] == "cold-gateway-http" and grpc["metadata"]["name"] == "cold-gateway-grpc"
    parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public",
              "namespace": "gateway-system", "sectionName": "https"}  # fmt: skip
    for route, hosts, port in ((http, ["telemetry.example.com"], gateway.HTTP_PORT),
                               (grpc, ["grpc.example.com", "*.grpc.example.com"], gateway.GRPC_PORT)):  # fmt: skip
        assert route["spec"]["parentRefs"] == [parent] and route["spec"]["hostnames"] == hosts
        (rule,) = route["spec"]["rules"]
        assert rule["backendRefs"] == [{"group": "", "kind": "Service", "name": "cold-gateway", "port": port}]
    assert http["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    only_grpc = fleet(fleet_doc(gateway={"routes": {"parentRefs": [{"name": "public"}], "grpc": ROUTES["grpc"]}}))
    assert [r["kind"] for r in exposure.gateway_routes(only_grpc)] == ["GRPCRoute"]
    assert exposure.gateway_routes(fleet(fleet_doc())) == []


def test_routes_validate_against_the_gateway_api_crds() -> None:
    f = fleet(fleet_doc(gateway={"routes": ROUTES}))
    for route in exposure.gateway_routes(f):
        assert route_errors(route) == [], route["kind"]
    minimal = fleet(
        fleet_doc(gateway={"routes": {"parentRefs": [{"name": "public", "port": 443}], "http": ROUTES["http"]}})
    )
    assert [route_errors(r) for r in exposure.gateway_routes(minimal)] == [[]]
    # The schema is strict enough to catch a wrong route: a port out of range, a hostname in capitals.
    (http, _) = exposure.gateway_routes(f)
    broken = {**http, "spec": {**http["spec"], "hostnames": ["Telemetry.Example.com"],
                               "rules": [{"backendRefs": [{"name": "cold-gateway", "port": 70000}]}]}}  # fmt: skip
    assert len(route_errors(broken)) == 2


def test_status_reports_a_routes_first_hostname_on_its_gateways_listener() -> None:
    f = fleet(fleet_doc(gateway={"routes": ROUTES}))
    assert exposure.parent_gateways(f) == [("gateway-system", "public")]
    assert exposure.external_endpoints(f, None, None, {("gateway-system", "public"): None}) == {}
    assert exposure.external_endpoints(f, None, None, {("gateway-system", "public"): LISTENERS}) == {
        "httpExternal": "https://telemetry.example.com",
        "wsExternal": "wss://telemetry.example.com",
        "grpcExternal": "grpc.example.com:443",
    }
    plain = fleet(fleet_doc(gateway={"routes": {**ROUTES, "parentRefs": [{"name": "public", "sectionName": "http"}]}}))
    found = exposure.external_endpoints(plain, None, None, {("ns1", "public"): LISTENERS})
    assert found["httpExternal"] == "http://telemetry.example.com" and found["grpcExternal"] == "grpc.example.com:80"
    # An Ingress host wins over a route's.
    both = fleet(fleet_doc(gateway={"routes": ROUTES, "ingress": INGRESS}))
    found = exposure.external_endpoints(both, None, None, {("gateway-system", "public"): LISTENERS})
    assert found["grpcExternal"] == "grpc.telemetry.example.com:443"


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"parentRefs": [], "http": {"hostnames": ["t.example.com"]}}, r"parentRefs"),
        ({"parentRefs": [{"name": "public"}], "grpc": {"hostnames": ["Grpc.Example.com"]}}, r"'Grpc\.Example\.com'"),
        ({"parentRefs": [{"name": "public", "port": 0}], "grpc": {"hostnames": ["g.example.com"]}}, r"port = 0"),
    ],
)
def test_bad_route_settings_are_refused_naming_them(routes: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        fleet(fleet_doc(gateway={"routes": routes}))
