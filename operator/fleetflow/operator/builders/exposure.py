"""How devices outside the cluster reach a fleet: the gateway's Ingresses (HTTP, gRPC) and the addresses its
published Services (`spec.gateway.service`, `spec.nats.managed.mqttService`) were given, for the status."""

from fleetflow.api import DeviceFleet
from fleetflow.api.overrides import IngressRoute
from fleetflow.operator.builders import gateway, nats
from fleetflow.operator.builders.common import JsonObject, fleet_labels, metadata, namespace_of

API_VERSION = "networking.k8s.io/v1"
PROTOCOLS = ("http", "grpc")
BACKEND_PORTS = {"http": gateway.HTTP_PORT, "grpc": gateway.GRPC_PORT}


def ingress_name(fleet: DeviceFleet, protocol: str) -> str:
    return f"{fleet.name}-gateway-{protocol}"


def _route(fleet: DeviceFleet, protocol: str) -> IngressRoute | None:
    spec = fleet.spec.gateway.ingress
    return getattr(spec, protocol) if spec is not None else None


def gateway_ingress(fleet: DeviceFleet, protocol: str) -> JsonObject | None:
    """The Ingress of one protocol, or None when `spec.gateway.ingress` does not name a host for it."""
    spec, route = fleet.spec.gateway.ingress, _route(fleet, protocol)
    if spec is None or route is None:
        return None
    meta = metadata(ingress_name(fleet, protocol), namespace_of(fleet), fleet_labels(fleet, "gateway"))
    annotations = {**(spec.annotations or {}), **(route.annotations or {})}
    if annotations:
        meta["annotations"] = annotations
    backend = {"service": {"name": gateway.name(fleet), "port": {"number": BACKEND_PORTS[protocol]}}}
    body: JsonObject = {
        "rules": [{"host": route.host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]
    }
    if spec.class_name:
        body["ingressClassName"] = spec.class_name
    if route.tls_secret_name:
        body["tls"] = [{"hosts": [route.host], "secretName": route.tls_secret_name}]
    return {"apiVersion": API_VERSION, "kind": "Ingress", "metadata": meta, "spec": body}


def gateway_ingresses(fleet: DeviceFleet) -> list[JsonObject]:
    return [found for protocol in PROTOCOLS if (found := gateway_ingress(fleet, protocol)) is not None]


def _addresses(service: JsonObject | None) -> list[str]:
    """Where a live LoadBalancer Service was given its addresses, as its status says (empty while pending)."""
    entries = (((service or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [e.get("hostname") or e.get("ip") for e in entries if e.get("hostname") or e.get("ip")]


def _published(service: JsonObject | None, port_name: str) -> tuple[str, int] | None:
    """(host, port) devices use for one port of a live published Service: the load balancer's address and the
    Service port, or a NodePort on any node (`<node>`); None while nothing is assigned."""
    if service is None:
        return None
    spec = service.get("spec") or {}
    (port,) = [p for p in spec.get("ports", []) if p.get("name") == port_name] or [{}]
    if spec.get("type") == "LoadBalancer" and _addresses(service) and port.get("port"):
        return _addresses(service)[0], int(port["port"])
    if spec.get("type") in ("NodePort", "LoadBalancer") and port.get("nodePort"):
        return "<node>", int(port["nodePort"])
    return None


def _ingress_endpoint(route: IngressRoute, protocol: str) -> str:
    secure = route.tls_secret_name is not None
    if protocol == "http":
        return f"{'https' if secure else 'http'}://{route.host}"
    return f"{route.host}:{443 if secure else 80}"


def _url(scheme: str, host: str, port: int) -> str:
    return f"{host}:{port}" if scheme == "grpc" else f"{scheme}://{host}:{port}"


def external_endpoints(
    fleet: DeviceFleet, gateway_service: JsonObject | None, mqtt_service: JsonObject | None
) -> dict[str, str]:
    """`httpExternal`, `wsExternal`, `grpcExternal`, `coapExternal` and `mqttExternal` for
    `status.gateway.endpoints`, from the Ingress hosts of the spec and the live Services; an endpoint still being
    assigned (a pending load balancer) is left out. An Ingress host wins over the gateway's published Service."""
    found: dict[str, str] = {}
    for protocol in PROTOCOLS:
        route = _route(fleet, protocol)
        where = _published(gateway_service, protocol) if fleet.spec.gateway.service.exposed else None
        if route is not None:
            found[f"{protocol}External"] = _ingress_endpoint(route, protocol)
        elif where is not None:
            scheme = "https" if protocol == "http" and fleet.spec.gateway.tls else protocol
            found[f"{protocol}External"] = _url(scheme, *where)
    if "httpExternal" in found:  # WebSocket sessions are on the HTTP route, behind the same TLS
        found["wsExternal"] = "ws" + found["httpExternal"].removeprefix("http")
    coap = _published(gateway_service, "coap") if fleet.spec.gateway.service.exposed else None
    if coap is not None:  # UDP: no Ingress carries it, only the published Service
        found["coapExternal"] = _url("coap", *coap)
    publishes_mqtt = nats.managed(fleet) and fleet.spec.nats.managed_or_default.mqtt_service is not None
    mqtt = _published(mqtt_service, "mqtt") if publishes_mqtt else None
    if mqtt is not None:
        found["mqttExternal"] = _url("mqtts" if nats.tls(fleet) else "mqtt", *mqtt)
    return found
