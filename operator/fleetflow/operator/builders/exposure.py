"""How devices outside the cluster reach a fleet: the gateway's Ingresses and Gateway API routes (HTTP, gRPC)
and the addresses its published Services (`spec.gateway.service`, `spec.nats.managed.mqttService`) were given,
for the status."""

from fleetflow.api import DeviceFleet
from fleetflow.api.overrides import GatewayParentRef, IngressRoute, RouteHosts
from fleetflow.operator.builders import gateway, nats
from fleetflow.operator.builders.common import JsonObject, fleet_labels, metadata, namespace_of

API_VERSION = "networking.k8s.io/v1"
ROUTES_API_VERSION = "gateway.networking.k8s.io/v1"
PROTOCOLS = ("http", "grpc")
BACKEND_PORTS = {"http": gateway.HTTP_PORT, "grpc": gateway.GRPC_PORT}
ROUTE_KINDS = {"http": "HTTPRoute", "grpc": "GRPCRoute"}


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


def route_name(fleet: DeviceFleet, protocol: str) -> str:
    return f"{fleet.name}-gateway-{protocol}"


def _route_hosts(fleet: DeviceFleet, protocol: str) -> RouteHosts | None:
    spec = fleet.spec.gateway.routes
    return getattr(spec, protocol) if spec is not None else None


def _parent_ref(ref: GatewayParentRef) -> JsonObject:
    found: JsonObject = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": ref.name}
    for key, value in (("namespace", ref.namespace), ("sectionName", ref.section_name), ("port", ref.port)):
        if value is not None:
            found[key] = value
    return found


def gateway_route(fleet: DeviceFleet, protocol: str) -> JsonObject | None:
    """The HTTPRoute (`http`) or GRPCRoute (`grpc`), or None when `spec.gateway.routes` names no hosts for it.
    Every path of the host goes to the gateway: device readings, command long-polls and WebSocket sessions."""
    spec, hosts = fleet.spec.gateway.routes, _route_hosts(fleet, protocol)
    if spec is None or hosts is None:
        return None
    backend = {"group": "", "kind": "Service", "name": gateway.name(fleet), "port": BACKEND_PORTS[protocol]}
    rule: JsonObject = {"backendRefs": [backend]}
    if protocol == "http":
        rule = {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], **rule}
    return {
        "apiVersion": ROUTES_API_VERSION,
        "kind": ROUTE_KINDS[protocol],
        "metadata": metadata(route_name(fleet, protocol), namespace_of(fleet), fleet_labels(fleet, "gateway")),
        "spec": {
            "parentRefs": [_parent_ref(ref) for ref in spec.parent_refs],
            "hostnames": list(hosts.hostnames),
            "rules": [rule],
        },
    }


def gateway_routes(fleet: DeviceFleet) -> list[JsonObject]:
    return [found for protocol in PROTOCOLS if (found := gateway_route(fleet, protocol)) is not None]


def hosts(fleet: DeviceFleet) -> list[str]:
    """Every host name devices reach the gateway by from outside: the Ingress hosts and the routes' hostnames."""
    found: list[str] = []
    for protocol in PROTOCOLS:
        route, route_hosts = _route(fleet, protocol), _route_hosts(fleet, protocol)
        found += [route.host] if route is not None else []
        found += list(route_hosts.hostnames) if route_hosts is not None else []
    return list(dict.fromkeys(found))


def parent_gateways(fleet: DeviceFleet) -> list[tuple[str, str]]:
    """(namespace, name) of each Gateway the routes attach to, to read their listeners for the status."""
    spec = fleet.spec.gateway.routes
    refs = spec.parent_refs if spec is not None else []
    return list(dict.fromkeys((ref.namespace or namespace_of(fleet), ref.name) for ref in refs))


def _listener(fleet: DeviceFleet, gateways: dict[tuple[str, str], JsonObject | None]) -> tuple[bool, int] | None:
    """(TLS or not, port) of the first HTTP or HTTPS listener of the parents the routes may attach to; None while
    no parent Gateway is there to say."""
    spec = fleet.spec.gateway.routes
    for ref in spec.parent_refs if spec is not None else []:
        found = gateways.get((ref.namespace or namespace_of(fleet), ref.name))
        for listener in ((found or {}).get("spec") or {}).get("listeners") or []:
            if ref.section_name is not None and listener.get("name") != ref.section_name:
                continue
            if ref.port is not None and listener.get("port") != ref.port:
                continue
            if listener.get("protocol") in ("HTTP", "HTTPS") and listener.get("port"):
                return listener["protocol"] == "HTTPS", int(listener["port"])
    return None


def _route_endpoint(host: str, secure: bool, port: int, protocol: str) -> str:
    if protocol == "grpc":
        return f"{host}:{port}"
    default = 443 if secure else 80
    return f"{'https' if secure else 'http'}://{host}{'' if port == default else f':{port}'}"


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
    fleet: DeviceFleet,
    gateway_service: JsonObject | None,
    mqtt_service: JsonObject | None,
    gateways: dict[tuple[str, str], JsonObject | None] | None = None,
) -> dict[str, str]:
    """`httpExternal`, `wsExternal`, `grpcExternal`, `coapExternal` and `mqttExternal` for
    `status.gateway.endpoints`, from the Ingress hosts of the spec, the routes' hostnames on the listeners of the
    live parent `gateways` and the live Services; an endpoint still being assigned (a pending load balancer, a
    Gateway not there yet) is left out. An Ingress host wins over a route, a route over the published Service."""
    found: dict[str, str] = {}
    listener = _listener(fleet, gateways or {})
    for protocol in PROTOCOLS:
        route, route_hosts = _route(fleet, protocol), _route_hosts(fleet, protocol)
        where = _published(gateway_service, protocol) if fleet.spec.gateway.service.exposed else None
        if route is not None:
            found[f"{protocol}External"] = _ingress_endpoint(route, protocol)
        elif route_hosts is not None and listener is not None:
            found[f"{protocol}External"] = _route_endpoint(route_hosts.hostnames[0], *listener, protocol)
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
